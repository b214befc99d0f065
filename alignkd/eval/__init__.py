"""alignkd.eval"""
