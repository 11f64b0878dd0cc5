"""The run manifest, `<output>/_manifest.json`: written last by a run, read by the manifest check.

One dataclass for both sides. The JSON keeps the field order below (docs/manifest.md);
secrets (values under secret-looking keys, `user:pass@` in URIs) never
reach it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from batchscore.core.errors import BatchscoreError

MANIFEST_NAME = "_manifest.json"
COUNTS = ("rows_in", "rows_scored", "rows_quarantined")

_SECRET_KEY = re.compile(r"(secret|password|token|credential|access[._-]?key|session[._-]?key)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class ManifestError(BatchscoreError):
    """The manifest is missing, unreadable, or describes a run that did not succeed."""


@dataclass(frozen=True)
class ModelInfo:
    path: str | None = None
    fingerprint: str | None = None
    signature: str | None = None
    distribution: str | None = None
    batch_size: int | None = None
    sharing: str | None = None  # worker | executor
    placement: str | None = None  # replicate | split
    pipeline_stages: int | None = None  # devices a split model ran on in the workers (max; 1: not split)


@dataclass(frozen=True)
class InputInfo:
    path: str | None = None
    format: str | None = None
    filter: str | None = None


@dataclass(frozen=True)
class OutputInfo:
    path: str | None = None
    mode: str | None = None
    quarantine_path: str | None = None
    columns: list[str] = field(default_factory=list)
    # Where this run's rows are: `path` and `quarantine_path` on local disk and HDFS; on
    # object stores the run's own prefixes below them (`<path>/_runs/<run_id>`), None
    # when the run quarantined no rows there. Readers read these.
    data_path: str | None = None
    quarantine_data_path: str | None = None
    format: str | None = None  # parquet | delta


@dataclass(frozen=True)
class SparkInfo:
    version: str | None = None
    master: str | None = None
    class_archive: str | None = None  # the JVM class-data archive the driver started with


@dataclass(frozen=True)
class PlanningInfo:
    """How the run spread its rows over the executors (batchscore.run.planning)."""

    slots: int | None = None  # tasks the executors run at once
    slots_source: str | None = None  # executors | conf | default_parallelism
    input_partitions: int | None = None  # DataFrame lane: Spark's input partitions; Arrow lane: input files
    tasks: int | None = None  # scoring tasks
    rebalanced: bool | None = None
    reason: str | None = None


_NESTED = {"model": ModelInfo, "input": InputInfo, "output": OutputInfo, "spark": SparkInfo, "planning": PlanningInfo}


@dataclass(frozen=True)
class RunManifest:
    """What a run did. Counts are checked when read; other fields are carried as written
    (a manifest from an older run may lack some: they read as None or empty)."""

    status: str | None
    run_id: str | None
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    model: ModelInfo = ModelInfo()
    input: InputInfo = InputInfo()
    output: OutputInfo = OutputInfo()
    lane: str | None = None
    planning: PlanningInfo = PlanningInfo()
    started_at: str | None = None
    finished_at: str | None = None
    seconds_total: float | None = None
    seconds_scoring: float | None = None
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    workers: dict[str, dict[str, float]] = field(default_factory=dict)  # per Python worker: start, loads, seconds
    # per Python worker: the device it scored on ("GPU:1", "CPU:0 (gpu 1 assigned, not visible)"; udfs/model/devices.py)
    devices: dict[str, str] = field(default_factory=dict)
    rows_per_second: float | None = None
    model_loads: int = 0
    # model.sharing executor: the model hosts' loads per executor id (a restarted host loads again)
    model_loads_by_executor: dict[str, int] = field(default_factory=dict)
    model_calls: int = 0
    max_rows_per_call: int = 0
    max_rows_per_batch: int = 0
    python_workers: int = 0
    peak_worker_rss_mb: float = 0.0
    corrupt_files_skipped: int = 0
    spark: SparkInfo = SparkInfo()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        """The manifest file's bytes, secrets redacted."""
        return (json.dumps(redact(self.to_dict()), indent=2, default=str) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifest:
        """Fields this version does not know are left out (a newer run may add some).

        Raises:
            ValueError: naming a count that is not a non-negative integer.
        """
        for key in COUNTS:
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"'{key}' must be a non-negative integer, got {v!r}")
        values = _known(cls, data)
        for k, nested in _NESTED.items():
            if isinstance(values.get(k), dict):
                values[k] = nested(**_known(nested, values[k]))
        values.setdefault("status", None)
        values.setdefault("run_id", None)
        return cls(**values)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RunManifest:
        """Raises ValueError: not JSON, not a JSON object, or a bad count."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("must hold a JSON object")
        return cls.from_dict(data)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def redact(value: Any, key: str = "") -> Any:
    """Drop secrets: values under secret-looking keys, and user:pass@ in URIs."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return _URI_USERINFO.sub("***@", value)
    return value
