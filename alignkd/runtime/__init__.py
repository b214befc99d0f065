"""alignkd.runtime"""
