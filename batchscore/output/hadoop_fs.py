"""Hadoop's FileSystem through the session's JVM: what Spark's committers wrote, with the
session's credentials (qualify, rename, delete, publish, staged row counts, the manifest write)."""
from __future__ import annotations

import builtins  # HadoopFs has a method named `list`: its annotations name the builtin
from typing import Any

from batchscore.core.storage import absolute, pyarrow_uri


class HadoopFs:
    """Thin wrapper over `org.apache.hadoop.fs.FileSystem` through the session's JVM."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, p: str) -> tuple[Any, Any]:
        jp = self._jvm.org.apache.hadoop.fs.Path(p)
        return jp.getFileSystem(self._conf), jp

    def qualify(self, p: str) -> str:
        """The fully qualified URI of a path (`file:/...`, `s3a://bucket/...`); local paths made absolute."""
        fs, jp = self._path(absolute(p))
        return str(fs.makeQualified(jp).toString())

    def exists(self, p: str) -> bool:
        fs, jp = self._path(p)
        return bool(fs.exists(jp))

    def list(self, p: str) -> builtins.list[tuple[str, bool]]:
        """(name, is_dir) of the children of a directory; [] if it does not exist."""
        fs, jp = self._path(p)
        if not fs.exists(jp):
            return []
        return [(st.getPath().getName(), bool(st.isDirectory())) for st in fs.listStatus(jp)]

    def mkdirs(self, p: str) -> None:
        fs, jp = self._path(p)
        fs.mkdirs(jp)

    def rename(self, src: str, dst: str) -> None:
        """Move src to dst, which must not exist (Hadoop would move src *into* it)."""
        fs, s = self._path(src)
        _, d = self._path(dst)
        if fs.exists(d):
            raise OSError(f"cannot move '{src}' to '{dst}': destination exists")
        if not fs.rename(s, d):
            raise OSError(f"cannot move '{src}' to '{dst}'")

    def delete(self, p: str) -> None:
        fs, jp = self._path(p)
        if fs.exists(jp):
            fs.delete(jp, True)

    def read_bytes(self, p: str) -> bytes | None:
        """A small file's bytes; None if it does not exist."""
        fs, jp = self._path(p)
        if not fs.exists(jp):
            return None
        stream = fs.open(jp)
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write_bytes(self, p: str, data: bytes) -> None:
        """Write a whole file. On object stores the object appears at once, when the upload
        completes on close (one PUT): a reader sees the old object or the new one."""
        fs, jp = self._path(p)
        out = fs.create(jp, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def parquet_rows(self, p: str) -> int:
        """Row count from a Parquet file's footer: pyarrow for local files, else Hadoop's
        Parquet reader (any Hadoop filesystem, with the session's credentials)."""
        if p.startswith(("file:", "/")):
            import pyarrow.parquet as pq  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

            return int(pq.read_metadata(pyarrow_uri(p)).num_rows)
        jp = self._jvm.org.apache.hadoop.fs.Path(p)
        parquet = self._jvm.org.apache.parquet.hadoop
        reader = parquet.ParquetFileReader.open(parquet.util.HadoopInputFile.fromPath(jp, self._conf))
        try:
            return int(reader.getRecordCount())
        finally:
            reader.close()

    def walk(self, root: str) -> builtins.list[tuple[str, builtins.list[str]]]:
        """(relative directory, its data file names) for every directory below root holding
        data files directly; hidden names (`_`, `.`) left out. `""` is root itself."""
        out: builtins.list[tuple[str, builtins.list[str]]] = []

        def visit(rel: str) -> None:
            files = []
            for name, is_dir in self.list(f"{root}/{rel}" if rel else root):
                if name.startswith(("_", ".")):
                    continue
                if is_dir:
                    visit(f"{rel}/{name}" if rel else name)
                else:
                    files.append(name)
            if files:
                out.append((rel, sorted(files)))

        visit("")
        return sorted(out)

    def files_under(self, root: str) -> builtins.list[str]:
        """Relative paths of all data files below root."""
        return sorted(f"{rel}/{name}" if rel else name for rel, names in self.walk(root) for name in names)

    def leaf_dirs(self, root: str) -> builtins.list[str]:
        """Relative paths of the directories below root that hold data files directly."""
        return [rel for rel, _ in self.walk(root)]
