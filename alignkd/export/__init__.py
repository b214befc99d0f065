"""alignkd.export"""
