"""batchscore's entry points: thin jobs that wire config, Spark and the engine."""
