"""udfs/batches"""
