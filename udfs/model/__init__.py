"""udfs/model"""
