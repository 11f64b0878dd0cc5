"""batchscore/config"""
