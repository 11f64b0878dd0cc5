"""Tests of the worker-side processes: the model host, the Python daemon, TensorFlow's start-up."""
