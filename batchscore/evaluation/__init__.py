"""batchscore/evaluation"""
