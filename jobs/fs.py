"""File operations on any path Spark can write (local, HDFS, S3A, DBFS) via Hadoop's FileSystem."""
from __future__ import annotations

import re
from typing import Any


class HadoopFs:
    """Thin wrapper over `org.apache.hadoop.fs.FileSystem` through the session's JVM."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, p: str) -> tuple[Any, Any]:
        jp = self._jvm.org.apache.hadoop.fs.Path(p)
        return jp.getFileSystem(self._conf), jp

    def qualify(self, p: str) -> str:
        fs, jp = self._path(p)
        return str(fs.makeQualified(jp).toString())

    def exists(self, p: str) -> bool:
        fs, jp = self._path(p)
        return bool(fs.exists(jp))

    def is_dir(self, p: str) -> bool:
        fs, jp = self._path(p)
        return bool(fs.exists(jp) and fs.getFileStatus(jp).isDirectory())

    def list(self, p: str) -> list[tuple[str, bool]]:
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

    def write_bytes(self, p: str, data: bytes) -> None:
        fs, jp = self._path(p)
        out = fs.create(jp, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def read_bytes(self, p: str) -> bytes:
        fs, jp = self._path(p)
        stream = fs.open(jp)
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def parquet_rows(self, p: str) -> int:
        """Row count from a Parquet file's footer: pyarrow for local files, else Hadoop's
        Parquet reader (any Hadoop filesystem)."""
        if p.startswith(("file:", "/")):
            import pyarrow.parquet as pq  # noqa: PLC0415

            local = re.sub(r"^file:(//)?", "", p)
            return int(pq.read_metadata(local).num_rows)
        jp = self._jvm.org.apache.hadoop.fs.Path(p)
        parquet = self._jvm.org.apache.parquet.hadoop
        reader = parquet.ParquetFileReader.open(parquet.util.HadoopInputFile.fromPath(jp, self._conf))
        try:
            return int(reader.getRecordCount())
        finally:
            reader.close()

    def files_under(self, p: str) -> list[str]:
        """Relative paths of all files below p, hidden ones (`_`, `.`) excluded."""
        out: list[str] = []

        def walk(rel: str) -> None:
            for name, is_dir in self.list(f"{p}/{rel}" if rel else p):
                if name.startswith(("_", ".")):
                    continue
                child = f"{rel}/{name}" if rel else name
                if is_dir:
                    walk(child)
                else:
                    out.append(child)

        walk("")
        return sorted(out)
