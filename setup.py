"""batchscore: offline batch scoring of TensorFlow models on Apache Spark."""
from setuptools import setup

setup(
    name="batchscore",
    version="0.1.0",
    description="Offline batch scoring of TensorFlow models on Apache Spark",
    packages=["jobs", "udfs"],
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=3.5",
        "pyarrow>=14",
        "pandas>=2,<3",
        "numpy>=1.26",
        "PyYAML>=6",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.15"],
        "gpu": ["tensorflow[and-cuda]>=2.15"],
        "test": ["pytest>=8", "hypothesis>=6", "psutil>=5", "moto[server]>=5", "boto3"],
        "bench": ["matplotlib>=3.7", "psutil>=5"],
    },
    entry_points={"console_scripts": ["batchscore-score=jobs.score:main"]},
)
