"""Check a scoring run's `_manifest.json`: `python -m jobs.check_manifest PATH [--min-rows N]`.

PATH is the manifest or the output directory holding it; local paths and URIs pyarrow
can open (s3://, s3a://, hdfs://, file:) work. On an object store the manifest is the run's
commit point and names the run's own prefix (`output.data_path`), which must be there.
Exit 0 when the run succeeded and every input row is accounted for; exit 2 with one line
`error: ...` on stderr otherwise. Used after the scoring task in dags/score_nightly.py, and
by hand after any run.
"""
from __future__ import annotations

import argparse
import json
import sys

from batchscore.core.storage import read_bytes
from batchscore.jobs.runner import Job, Run, run_job
from batchscore.output.manifest import MANIFEST_NAME, ManifestError, RunManifest

__all__ = ["ManifestError", "check_manifest", "main"]


def check_manifest(path: str, *, min_rows: int = 0) -> RunManifest:
    """Read and check a run manifest; returns it when the run is good.

    Args:
        path: the manifest file, or the output directory that holds `_manifest.json`.
        min_rows: fail when fewer input rows than this were read (0: an empty input is fine).

    Raises:
        ManifestError: naming the file and what is wrong (status, counts, accounting).
    """
    path = _manifest_path(path)
    manifest = _read(path)
    if manifest.status != "succeeded":
        raise ManifestError(f"{path}: status is {manifest.status!r}, expected 'succeeded'")
    if manifest.rows_in != manifest.rows_scored + manifest.rows_quarantined:
        raise ManifestError(
            f"{path}: rows_in={manifest.rows_in} != rows_scored={manifest.rows_scored} + "
            f"rows_quarantined={manifest.rows_quarantined}")
    if manifest.rows_in < min_rows:
        raise ManifestError(f"{path}: rows_in={manifest.rows_in} is below the minimum of {min_rows}")
    _check_run_prefix(path, manifest)
    return manifest


def _check_run_prefix(path: str, manifest: RunManifest) -> None:
    """On an object store the manifest names the run's own prefix (batchscore/output/publish.py): it must
    hold the run's `_SUCCESS` marker, written before the manifest."""
    data = manifest.output.data_path
    if not data or data.rstrip("/") == (manifest.output.path or "").rstrip("/"):
        return  # local disk, HDFS: the rows are at output.path itself
    try:
        read_bytes(f"{data.rstrip('/')}/_SUCCESS")
    except OSError:  # FileNotFoundError included
        raise ManifestError(f"{path}: output.data_path '{data}' holds no _SUCCESS marker "
                            "(the run's files were deleted?)") from None


def _manifest_path(path: str) -> str:
    return path if path.rstrip("/").endswith(".json") else path.rstrip("/") + "/" + MANIFEST_NAME


def _read(path: str) -> RunManifest:
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        raise ManifestError(f"manifest '{path}' not found (the run did not finish?)") from None
    except OSError as e:
        raise ManifestError(f"manifest '{path}' cannot be read: {e}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"manifest '{path}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest '{path}' must hold a JSON object")
    try:
        return RunManifest.from_dict(data)
    except ValueError as e:  # a count that is not a non-negative integer
        raise ManifestError(f"{path}: {e}") from None


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the _manifest.json, or the output directory holding it")
    p.add_argument("--min-rows", type=int, default=0, help="fail when fewer input rows were read (default 0)")


def _summary(m: RunManifest) -> str:
    return (f"ok: run {m.run_id} succeeded: {m.rows_in:,} rows in, {m.rows_scored:,} scored, "
            f"{m.rows_quarantined:,} quarantined")


def _check(run: Run) -> RunManifest:
    return check_manifest(run.args.path, min_rows=run.args.min_rows)


JOB = Job(prog="jobs.check_manifest", description="Check a scoring run's _manifest.json.", options=_options,
          run=_check, summary=_summary, what="the manifest check")


def main(argv: list[str] | None = None) -> int:
    """Check the manifest; returns the exit code (0, or 2 with one `error:` line)."""
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
