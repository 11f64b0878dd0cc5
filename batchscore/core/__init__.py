"""batchscore/core"""
