"""batchscore/output"""
