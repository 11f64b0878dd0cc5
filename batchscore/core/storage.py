"""Paths and files, in one place.

Two ways in, each where it must be used:

- **pyarrow filesystems** read and list: executors reading input (no JVM there),
  the driver planning and sampling the Arrow lane, the manifest check.
- **The session's filesystem** (`batchscore.output.filesystem`: Hadoop's through the JVM of a
  classic session, pyarrow's on a Spark Connect client) on the driver, for everything Spark's
  committers wrote or that needs the session's credentials.
"""
from __future__ import annotations

import os
import posixpath
import re

import pyarrow.fs as pafs

from batchscore.core.errors import InputError

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


# --- path strings ---


def absolute(path: str) -> str:
    """A local path made absolute; a URI (`s3a://`, `file:`, `dbfs:`) as given."""
    return path if _SCHEME.match(path) else os.path.abspath(path)


def inside(child: str, parent: str) -> bool:
    """Whether `child` is `parent` or below it (plain string prefixes by path component)."""
    return (child.rstrip("/") + "/").startswith(parent.rstrip("/") + "/")


def pyarrow_uri(path: str) -> str:
    """A path pyarrow's filesystems understand (Databricks and Hadoop spellings mapped)."""
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path[len("dbfs:/"):].lstrip("/")
    if path.startswith("file://"):
        return path[len("file://"):] or "/"
    if path.startswith("file:"):
        return path[len("file:"):]
    if path.startswith(("s3a://", "s3n://")):
        return "s3://" + path.split("://", 1)[1]
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path):
        return path
    return os.path.abspath(path)


# Object stores: no atomic directory rename (S3A, GCS and wasb copy then delete, file by file),
# so a run is published under its own prefix and committed by one object (batchscore/output/publish.py).
# abfs:// (ADLS Gen2, hierarchical namespace) does rename atomically, but the account may
# be flat, so it takes the same road.
OBJECT_STORE_SCHEMES = frozenset({"s3a", "s3", "s3n", "gs", "abfs", "abfss", "wasb", "wasbs", "oss", "cos", "cosn"})


def is_object_store(path: str) -> bool:
    """Whether `path` is on an object store (by its scheme): published per run, not by renames."""
    m = _SCHEME.match(path)
    return m is not None and path[: m.end() - 1].lower() in OBJECT_STORE_SCHEMES


def hidden(rel: str) -> bool:
    """Spark's and Hadoop's rule: a part starting with `_` or `.` is not data."""
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


# --- pyarrow: read and list ---


def pyarrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a `pyarrow_uri`."""
    if uri.startswith("/"):
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


HDFS_SCHEMES = ("hdfs://", "viewfs://")


def pyarrow_hdfs_problem(uri: str) -> str | None:
    """Why pyarrow's HDFS client cannot open `uri` in this process, in one line; None if it can.

    pyarrow reaches HDFS through libhdfs (JNI): it needs `libhdfs.so` (a native Hadoop
    install: `$ARROW_LIBHDFS_DIR`, `$HADOOP_HOME/lib/native` or the loader's path), a JVM
    (`$JAVA_HOME`) and the Hadoop jars on `$CLASSPATH`. Where libhdfs is found, connecting
    is the test.
    """
    if _find_libhdfs() is None:
        unset = [k for k in ("JAVA_HOME", "CLASSPATH", "HADOOP_HOME", "ARROW_LIBHDFS_DIR") if not os.environ.get(k)]
        return ("pyarrow's HDFS client needs libhdfs.so from a native Hadoop install, not found here"
                + (f" ({', '.join(unset)} unset)" if unset else ""))
    try:
        pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:
        return f"pyarrow's HDFS client cannot connect: {str(e).splitlines()[0][:200]}"
    return None


def _find_libhdfs() -> str | None:
    """The libhdfs.so pyarrow would load, where it looks for it."""
    import ctypes.util  # noqa: PLC0415 - only when an hdfs:// input is planned

    dirs = [os.environ.get("ARROW_LIBHDFS_DIR", "")]
    if os.environ.get("HADOOP_HOME"):
        dirs.append(os.path.join(os.environ["HADOOP_HOME"], "lib", "native"))
    dirs += os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    for d in filter(None, dirs):
        if os.path.isfile(os.path.join(d, "libhdfs.so")):
            return os.path.join(d, "libhdfs.so")
    return ctypes.util.find_library("hdfs")


def list_input_files(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """Data files below `root` (or root itself if it is a file), sorted, hidden ones left out.

    Raises:
        InputError: root does not exist or cannot be listed.
    """
    try:
        info = fs.get_file_info(root)
    except OSError as e:
        raise InputError(f"input.path '{root}' cannot be listed: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input.path '{root}' does not exist")
    if info.type == pafs.FileType.File:
        return [info]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File and not hidden(posixpath.relpath(i.path, root))]
    return sorted(files, key=lambda i: i.path)


def parquet_footer_ok(path: str, root_uri: str) -> bool:
    """Whether a Parquet file below `root_uri` has a readable footer (runs on executors)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

    fs, _ = pyarrow_fs(root_uri)
    try:
        with fs.open_input_file(path) as f:
            pq.ParquetFile(f).metadata  # noqa: B018 - reads and checks the footer
        return True
    except Exception:  # noqa: BLE001 - any unreadable file counts as corrupt
        return False


def read_bytes(path: str) -> bytes:
    """A small file's bytes: local paths, `file:` and URIs pyarrow opens (s3://, hdfs://, ...).

    Raises:
        FileNotFoundError: it does not exist. OSError: it cannot be read.
    """
    fs, inner = pyarrow_fs(pyarrow_uri(path))
    with fs.open_input_stream(inner) as fh:
        return fh.read()
