"""alignkd.distill"""
