"""udfs/lanes"""
