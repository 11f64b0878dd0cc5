"""batchscore/training"""
