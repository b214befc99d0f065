"""alignkd.data"""
