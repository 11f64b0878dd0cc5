"""batchscore's scoring engine: TensorFlow models on Arrow batches inside Spark tasks."""
from __future__ import annotations

__version__ = "0.1.0"
