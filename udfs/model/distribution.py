"""Get the model's files to the executors: broadcast, SparkContext.addFile, or direct."""
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
from batchscore.core.storage import absolute


@dataclass(frozen=True)
class ModelSource:
    """A picklable handle the executors resolve to a local model path.

    `broadcast` holds a Spark Broadcast of the model directory packed as an
    uncompressed tar; `files` names a directory shipped with addFile; `direct`
    is a path every worker can read (a shared filesystem, or a URI TF can open).
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
        return _unpack_once(self.broadcast.value, self.fingerprint, os.path.basename(self.path.rstrip("/")))


def make_model_source(sc: Any, path: str, fingerprint: str, kind: str) -> ModelSource:
    """On the driver: prepare the model for the executors."""
    path = absolute(path)
    if kind == "direct":
        return ModelSource(kind, path, fingerprint)
    if kind == "files":
        sc.addFile(path, recursive=os.path.isdir(path))
        return ModelSource(kind, path, fingerprint)
    if kind == "broadcast":
        return ModelSource(kind, path, fingerprint, sc.broadcast(pack_model(path)))
    raise ConfigError(f"model.distribution must be one of {', '.join(DISTRIBUTIONS)}, got '{kind}'")


def pack_model(path: str) -> bytes:
    """The model file or directory as tar bytes (uncompressed: weights barely compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")))
    return buf.getvalue()


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
