"""Get the model's files to the executors: broadcast, SparkContext.addFile, or direct.

Under Spark Connect (no SparkContext in the client) `broadcast` and `files` ship the packed
model as one file artifact (`spark.addArtifacts(..., file=True)`) named by its fingerprint;
each executor host unpacks it once, as it does a broadcast.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

from batchscore.core.choices import DISTRIBUTIONS
from batchscore.core.errors import ConfigError
from batchscore.core.session_kind import is_connect
from batchscore.core.storage import absolute


@dataclass(frozen=True)
class ModelSource:
    """A picklable handle the executors resolve to a local model path.

    `broadcast` holds a Spark Broadcast of the model directory packed as an
    uncompressed tar; `files` names a directory shipped with addFile; `artifact` names
    that tar shipped as a Spark Connect file artifact; `direct` is a path every worker
    can read (a shared filesystem, or a URI TF can open).
    """

    kind: str
    path: str
    fingerprint: str
    broadcast: Any = None

    def local_path(self) -> str:
        """On an executor: where the model's files are (unpacked once per host)."""
        if self.kind == "direct":
            return self.path
        if self.kind == "files":
            from pyspark import SparkFiles  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

            return SparkFiles.get(os.path.basename(self.path.rstrip("/")))
        name = os.path.basename(self.path.rstrip("/"))
        if self.kind == "artifact":
            from pyspark import SparkFiles  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

            return _unpack_file_once(SparkFiles.get(artifact_name(self.fingerprint)), self.fingerprint, name)
        return _unpack_once(self.broadcast.value, self.fingerprint, os.path.basename(self.path.rstrip("/")))


def make_model_source(spark: Any, path: str, fingerprint: str, kind: str) -> ModelSource:
    """On the driver: prepare the model for the executors."""
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"model.distribution must be one of {', '.join(DISTRIBUTIONS)}, got '{kind}'")
    path = absolute(path)
    if kind == "direct":
        return ModelSource(kind, path, fingerprint)
    if is_connect(spark):
        return _artifact_source(spark, path, fingerprint)
    if kind == "files":
        spark.sparkContext.addFile(path, recursive=os.path.isdir(path))
        return ModelSource(kind, path, fingerprint)
    return ModelSource(kind, path, fingerprint, spark.sparkContext.broadcast(pack_model(path)))


def artifact_name(fingerprint: str) -> str:
    """The file artifact's name: one per model content (an extension Spark does not unpack)."""
    return f"batchscore-model-{fingerprint}.bsmodel"


def _artifact_source(spark: Any, path: str, fingerprint: str) -> ModelSource:
    """Ship the packed model as a Spark Connect file artifact (once per content: the name is its fingerprint)."""
    with tempfile.TemporaryDirectory(prefix="batchscore-artifact-") as tmp:
        packed = os.path.join(tmp, artifact_name(fingerprint))
        with open(packed, "wb") as fh:
            fh.write(pack_model(path))
        spark.addArtifacts(packed, file=True)
    return ModelSource("artifact", path, fingerprint)


def pack_model(path: str) -> bytes:
    """The model file or directory as tar bytes (uncompressed: weights barely compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")))
    return buf.getvalue()


def _unpack_file_once(packed: str, fingerprint: str, name: str) -> str:
    """`_unpack_once` from a packed file on the executor (read only when not unpacked yet)."""
    target = os.path.join(tempfile.gettempdir(), "batchscore-models", fingerprint, name)
    if os.path.exists(target):
        return target
    with open(packed, "rb") as fh:
        return _unpack_once(fh.read(), fingerprint, name)


def _unpack_once(data: bytes, fingerprint: str, name: str) -> str:
    """Unpack to `<tmp>/batchscore-models/<fingerprint>/<name>`; workers on a host share it.

    The same model content may come from folders of different names (one fingerprint,
    two names): each name gets its own entry under the fingerprint's folder.
    """
    root = os.path.join(tempfile.gettempdir(), "batchscore-models")
    final = os.path.join(root, fingerprint)
    target = os.path.join(final, name)
    if os.path.exists(target):
        return target
    os.makedirs(final, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{fingerprint}-", dir=root)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
        try:
            os.rename(os.path.join(staging, name), target)  # atomic; another worker may have won the race
        except OSError:
            if not os.path.exists(target):
                raise
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target
