"""batchscore/session"""
