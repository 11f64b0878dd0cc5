"""batchscore: offline batch scoring of TensorFlow models on Apache Spark.

The metadata lives in pyproject.toml (PEP 621); this file stays because the design
card names it and older tooling calls it.
"""
from setuptools import setup

setup()
