"""The benchmark harness: `python -m bench.run --profile quick|full` (see bench/README.md)."""
