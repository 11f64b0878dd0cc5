"""Spark failures a user caused, as one-line BatchscoreErrors; the telling line of the rest."""
from __future__ import annotations

import re

from batchscore.core import errors as udfs_errors
from batchscore.core.errors import BadRowsError, BatchscoreError, InputError


def translate_spark_error(e: Exception) -> Exception:
    """Turn task failures a user caused into one-line BatchscoreErrors; others come back as they were."""
    text = str(e)
    m = re.search(r"BadRowsError: (.+)", text)
    if m:
        return BadRowsError(m.group(1).strip())
    m = re.search(r"udfs\.errors\.(\w+Error): (.+)", text) or re.search(
        r"\b(ModelError|SchemaError|InputError|ConfigError): (.+)", text)
    if m:
        cls = getattr(udfs_errors, m.group(1), None)  # keep the type: InputError stays InputError
        cls = cls if isinstance(cls, type) and issubclass(cls, BatchscoreError) else BatchscoreError
        return cls(m.group(2).strip())
    # Spark 4: FAILED_READ_FILE; Spark 3.5: "Could not read footer for file: F" / "F is not a Parquet file"
    m = (re.search(r"(?:Encountered error while reading file|FAILED_READ_FILE[^\n]*?file"
                   r"|Could not read footer for file:) "
                   r"([^\s.]+(?:\.[^\s.]+)*)", text)
         or re.search(r"RuntimeException: (\S+) is not a Parquet file", text))
    if m:
        return InputError(f"cannot read input file {m.group(1)} (corrupt or not Parquet?); "
                          "set input.ignore_corrupt_files: true to skip such files")
    return e


def one_line(e: Exception) -> str:
    """The telling line of a failure: for Py4J errors the Java exception (e.g. "Job aborted due
    to stage failure: ... Python worker exited unexpectedly"), not "An error occurred while calling o12.parquet"."""
    lines = [ln.strip().lstrip(":").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("An error occurred while calling")]
    if not lines:
        return type(e).__name__
    if "[TASK_WRITE_FAILED]" in lines[0]:  # Spark 3.5 names a failed write task by its write: add the cause
        cause = next((ln.removeprefix("Caused by:").strip() for ln in lines[1:]
                      if ln.startswith("Caused by:") and "TASK_WRITE_FAILED" not in ln), "")
        return f"{lines[0][:300]} (caused by: {cause[:290]})" if cause else lines[0][:600]
    return lines[0][:600]
