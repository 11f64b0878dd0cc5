"""Spark failures a user caused, as one-line BatchscoreErrors; the telling line of the rest."""
from __future__ import annotations

import re

from batchscore.udfs import errors as udfs_errors
from batchscore.udfs.errors import BadRowsError, BatchscoreError, InputError


def translate_spark_error(e: Exception) -> Exception:
    """Turn task failures a user caused into one-line BatchscoreErrors; others come back as they were."""
    text = str(e)
    m = re.search(r"BadRowsError: (.+)", text)
    if m:
        return BadRowsError(m.group(1).strip())
    m = re.search(r"udfs\.errors\.(\w+Error): (.+)", text) or re.search(
        r"\b(ModelError|SchemaError|InputError): (.+)", text)
    if m:
        cls = getattr(udfs_errors, m.group(1), None)  # keep the type: InputError stays InputError
        cls = cls if isinstance(cls, type) and issubclass(cls, BatchscoreError) else BatchscoreError
        return cls(m.group(2).strip())
    m = re.search(r"(?:Encountered error while reading file|FAILED_READ_FILE[^\n]*?file) ([^\s.]+(?:\.[^\s.]+)*)", text)
    if m:
        return InputError(f"cannot read input file {m.group(1)} (corrupt or not Parquet?); "
                          "set input.ignore_corrupt_files: true to skip such files")
    return e


def one_line(e: Exception) -> str:
    """The telling line of a failure: for Py4J errors the Java exception (e.g. "Job aborted due
    to stage failure: ... Python worker exited unexpectedly"), not "An error occurred while calling o12.parquet"."""
    lines = [ln.strip().lstrip(":").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("An error occurred while calling")]
    return lines[0][:600] if lines else type(e).__name__
