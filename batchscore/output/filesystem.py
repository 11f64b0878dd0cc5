"""The driver's one filesystem layer: listing, staging, publish and manifest I/O.

`filesystem_for(spark)` picks the implementation by the session's kind: Hadoop's
FileSystem through the session's JVM on a classic session (`HadoopFs`: every scheme
Spark's committers wrote, with the session's credentials), pyarrow's filesystems on a
Spark Connect client, which has no JVM (`ArrowFs`). Both qualify paths alike
(`file:/...`, `s3a://...`), so manifests written through either compare equal.
"""
from __future__ import annotations

import builtins  # the protocol has a method named `list`: its annotations name the builtin
from typing import Any, Protocol

from batchscore.core.session_kind import is_connect
from batchscore.output.arrow_fs import ArrowFs
from batchscore.output.hadoop_fs import HadoopFs


class FileSystem(Protocol):
    """What the driver does with files (batchscore/output/publish.py's protocol and its callers)."""

    def qualify(self, p: str) -> str:
        """The fully qualified URI of a path (`file:/...`, `s3a://bucket/...`)."""
        ...

    def exists(self, p: str) -> bool: ...

    def list(self, p: str) -> builtins.list[tuple[str, bool]]:
        """(name, is_dir) of the children of a directory; [] if it does not exist."""
        ...

    def mkdirs(self, p: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Move src to dst, which must not exist (OSError otherwise)."""
        ...

    def delete(self, p: str) -> None: ...

    def read_bytes(self, p: str) -> bytes | None:
        """A small file's bytes; None if it does not exist."""
        ...

    def write_bytes(self, p: str, data: bytes) -> None: ...

    def parquet_rows(self, p: str) -> int:
        """Row count from a Parquet file's footer."""
        ...

    def walk(self, root: str) -> builtins.list[tuple[str, builtins.list[str]]]:
        """(relative directory, its data file names) of every directory below root holding data files."""
        ...

    def files_under(self, root: str) -> builtins.list[str]: ...

    def leaf_dirs(self, root: str) -> builtins.list[str]: ...


def filesystem_for(spark: Any) -> FileSystem:
    """The session's filesystem: `ArrowFs` for a Spark Connect session, else `HadoopFs`."""
    if is_connect(spark):
        return ArrowFs.for_session(spark)
    return HadoopFs(spark)
