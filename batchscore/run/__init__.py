"""batchscore/run"""
