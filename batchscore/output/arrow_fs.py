"""The driver's filesystem without a JVM: pyarrow's filesystems, for Spark Connect clients.

The same operations as `HadoopFs` with the same path forms: local paths qualified as
`file:/...` (Hadoop's spelling, so manifests compare equal), `s3a://`/`s3://` through
pyarrow's S3 with the session's S3A settings (else the AWS environment), other schemes
through `pyarrow.fs.FileSystem.from_uri`. A local rename is `os.rename` (atomic, which the
rename publish relies on); on object stores a directory "rename" copies object by object,
as S3A does, and the publish protocol commits there by its manifest, never by a rename.
HDFS needs pyarrow's libhdfs here: without it every hdfs:// path is one clear ConfigError.
"""
from __future__ import annotations

import builtins  # ArrowFs has a method named `list`: its annotations name the builtin
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow.fs as pafs

from batchscore.core.errors import ConfigError
from batchscore.core.storage import HDFS_SCHEMES, hidden, pyarrow_hdfs_problem, pyarrow_uri

S3A = "spark.hadoop.fs.s3a."
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/]*)(.*)$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(.*)$")


def s3_options(get: Callable[[str], str | None], env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`pyarrow.fs.S3FileSystem` options from S3A settings (`get`: a conf lookup, None when unset).

    Keys and endpoint the conf sets win. Else the endpoint is the environment's
    (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, path-style, as `batchscore.session.builder.s3a_env_conf`
    gives it to S3A) and the keys are left to pyarrow's AWS credential chain (`AWS_ACCESS_KEY_ID`, ...).
    """
    opts: dict[str, Any] = {}
    access, secret = get(S3A + "access.key"), get(S3A + "secret.key")
    if access and secret:
        opts.update(access_key=access, secret_key=secret)
        token = get(S3A + "session.token")
        if token:
            opts["session_token"] = token
    region = get(S3A + "endpoint.region")
    if region:
        opts["region"] = region
    endpoint = get(S3A + "endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        if not sep:  # S3A's form: a host, https unless SSL is off
            scheme, host = ("http" if get(S3A + "connection.ssl.enabled") == "false" else "https"), endpoint
        opts.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        if (get(S3A + "path.style.access") or "").lower() == "false":
            opts["force_virtual_addressing"] = True  # pyarrow addresses an endpoint by path unless told
        opts.setdefault("region", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
    return opts


def _conf_getter(spark: Any) -> Callable[[str], str | None]:
    def get(key: str) -> str | None:
        return spark.conf.get(key, None)

    return get


def _normal(path: str) -> str:
    """A path's `/`-separated part normalised as Hadoop's Path does: `.`/`..`, `//`, a trailing `/`."""
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("//") else out


class ArrowFs:
    """`HadoopFs`'s operations on pyarrow's filesystems (no JVM, no py4j)."""

    def __init__(self, conf: Callable[[str], str | None] | None = None) -> None:
        """`conf`: the session's conf lookup (None when a key is unset), read on the first S3 path."""
        self._get = conf or (lambda _key: None)
        self._local = pafs.LocalFileSystem()
        self._s3fs: pafs.FileSystem | None = None

    @classmethod
    def for_session(cls, spark: Any) -> ArrowFs:
        """The filesystem of a session's paths: S3 settings from its conf (`spark.conf.get`)."""
        return cls(_conf_getter(spark))

    def qualify(self, p: str) -> str:
        """The fully qualified URI of a path, as `HadoopFs.qualify` spells it (`file:/...`,
        `s3a://bucket/...`); local paths made absolute.

        Raises:
            ConfigError: an hdfs:// path where pyarrow cannot reach HDFS.
        """
        m = _URI.match(p)
        if m:
            scheme, host, rest = m.groups()
            if scheme.lower() == "file":
                if host:
                    raise ConfigError(f"'{p}': a file: URI names no host; write file:/path or file:///path")
                return "file:" + _normal(rest or "/")
            if p.startswith(HDFS_SCHEMES):
                self._resolve(p)
            return p if rest in ("", "/") else f"{scheme}://{host}{_normal(rest)}"
        m = _SCHEME.match(p)
        if m:
            return f"{m.group(1)}:{_normal(m.group(2))}" if m.group(2) else p
        return "file:" + _normal(os.path.abspath(p))

    def _resolve(self, p: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path inside it) of a path in any form `qualify` takes or gives."""
        uri = pyarrow_uri(p)
        if uri.startswith("/"):
            return self._local, _normal(uri)
        m = _URI.match(uri)
        if m and m.group(1).lower() == "s3":
            return self._s3(), _normal("/" + m.group(2) + m.group(3)).lstrip("/")
        if uri.startswith(HDFS_SCHEMES):
            problem = pyarrow_hdfs_problem(uri)
            if problem:
                raise ConfigError(
                    f"'{p}': HDFS paths need a classic session or pyarrow's libhdfs; run the job with a classic "
                    f"session, or give this Spark Connect client a native Hadoop client ({problem})")
        try:
            return pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"'{p}': pyarrow cannot open this path here (a Spark Connect client reaches "
                              f"storage through pyarrow): {str(e).splitlines()[0][:200]}") from None

    def _s3(self) -> pafs.FileSystem:
        if self._s3fs is None:
            self._s3fs = pafs.S3FileSystem(**s3_options(self._get))
        return self._s3fs

    def exists(self, p: str) -> bool:
        fs, inner = self._resolve(p)
        return fs.get_file_info(inner).type != pafs.FileType.NotFound

    def list(self, p: str) -> builtins.list[tuple[str, bool]]:
        """(name, is_dir) of the children of a directory; [] if it does not exist."""
        fs, inner = self._resolve(p)
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        return sorted((posixpath.basename(i.path), i.type == pafs.FileType.Directory) for i in infos)

    def mkdirs(self, p: str) -> None:
        fs, inner = self._resolve(p)
        fs.create_dir(inner, recursive=True)

    def rename(self, src: str, dst: str) -> None:
        """Move src to dst, which must not exist: `os.rename` on local disk (atomic); on an
        object store a file is copied then deleted, a directory file by file (as S3A does)."""
        sfs, s = self._resolve(src)
        dfs, d = self._resolve(dst)
        if dfs.get_file_info(d).type != pafs.FileType.NotFound:
            raise OSError(f"cannot move '{src}' to '{dst}': destination exists")
        if sfs.type_name != dfs.type_name:
            raise OSError(f"cannot move '{src}' to '{dst}': another filesystem")
        if sfs.type_name == "local":
            try:
                os.rename(s, d)
            except OSError as e:
                raise OSError(f"cannot move '{src}' to '{dst}': {e.strerror}") from e
            return
        kind = sfs.get_file_info(s).type
        if kind == pafs.FileType.NotFound:
            raise OSError(f"cannot move '{src}' to '{dst}': source does not exist")
        if kind == pafs.FileType.Directory and sfs.type_name in ("s3", "gcs"):
            _copy_tree(sfs, s, d)
            sfs.delete_dir(s)
        else:
            sfs.move(s, d)

    def delete(self, p: str) -> None:
        fs, inner = self._resolve(p)
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(inner)
        elif kind != pafs.FileType.NotFound:
            fs.delete_file(inner)

    def read_bytes(self, p: str) -> bytes | None:
        """A small file's bytes; None if it does not exist."""
        fs, inner = self._resolve(p)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(inner) as fh:
            return bytes(fh.read())

    def write_bytes(self, p: str, data: bytes) -> None:
        """Write a whole file: a reader sees the old file or the new one (local disk: a temporary
        file beside it, then `os.replace`; object stores: one small PUT on close)."""
        fs, inner = self._resolve(p)
        if fs.type_name != "local":
            with fs.open_output_stream(inner) as out:
                out.write(data)
            return
        parent, name = os.path.split(inner)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.bs-tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, inner)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def parquet_rows(self, p: str) -> int:
        """Row count from a Parquet file's footer."""
        import pyarrow.parquet as pq  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

        fs, inner = self._resolve(p)
        return int(pq.read_metadata(inner, filesystem=fs).num_rows)

    def walk(self, root: str) -> builtins.list[tuple[str, builtins.list[str]]]:
        """(relative directory, its data file names) for every directory below root holding
        data files directly; hidden names (`_`, `.`) left out. `""` is root itself.
        One recursive listing (on an object store: one paged LIST, not one per directory)."""
        fs, inner = self._resolve(root)
        dirs: dict[str, builtins.list[str]] = {}
        for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True)):
            rel = posixpath.relpath(info.path, inner)
            if info.type == pafs.FileType.File and not hidden(rel):
                parent, name = posixpath.split(rel)
                dirs.setdefault(parent, []).append(name)
        return sorted((rel, sorted(names)) for rel, names in dirs.items())

    def files_under(self, root: str) -> builtins.list[str]:
        """Relative paths of all data files below root."""
        return sorted(f"{rel}/{name}" if rel else name for rel, names in self.walk(root) for name in names)

    def leaf_dirs(self, root: str) -> builtins.list[str]:
        """Relative paths of the directories below root that hold data files directly."""
        return [rel for rel, _ in self.walk(root)]


def _copy_tree(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Copy every file below `src` to the same place below `dst` (server-side copies on S3)."""
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, f"{dst}/{posixpath.relpath(info.path, src)}")
