"""udfs/host"""
