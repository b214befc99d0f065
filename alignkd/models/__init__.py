"""alignkd.models"""
