"""Exceptions a user can cause. Each message names the thing that is wrong."""
from __future__ import annotations


class BatchscoreError(Exception):
    """Base class of errors caused by input, config or model (exit code 2)."""


class ConfigError(BatchscoreError):
    """A config key is missing, unknown or has a bad value."""


class ModelError(BatchscoreError):
    """The model path is not a readable SavedModel or lacks the signature."""


class SchemaError(BatchscoreError):
    """The input columns cannot feed the model's signature."""


class InputError(BatchscoreError):
    """The input data cannot be read (missing path, corrupt file)."""


class OutputError(BatchscoreError):
    """A job's own output file cannot be written (a report to a read-only place)."""


class BadRowsError(BatchscoreError):
    """Rows failed validation while `quarantine.on_bad_rows` is `fail`."""


class ModelUnavailable(RuntimeError):
    """The process that runs the model is gone (a model host died): the task fails and Spark
    retries it; its rows are never quarantined as rejected by the model. Not a user error."""
