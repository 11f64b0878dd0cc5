"""Stage, then publish: output appears only when complete, the old one stays until then.

Spark writes everything into a hidden staging directory beside the output,
split by row status (`bs__reason=ok` for predictions, other reasons for the
quarantine). Publishing is then a few directory renames (local disk, HDFS).
Object stores cannot rename a directory atomically: there each run writes under its
own prefix and a manifest written last is the commit point (`commit_run`).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any

from batchscore.core.columns import BAD_COLUMN, NO_COLUMN, OK_REASON, REASON_COLUMN
from batchscore.output.filesystem import FileSystem

RUNS_DIR = "_runs"  # hidden from Spark's and pyarrow's listings of the output


def staging_path(output: str, run_id: str) -> str:
    parent, name = posixpath.split(output.rstrip("/"))
    return posixpath.join(parent, f".{name}.bs-staging-{run_id}")


def ok_dir(staging: str) -> str:
    return f"{staging}/{REASON_COLUMN}={OK_REASON}/{BAD_COLUMN}={NO_COLUMN}"


def sibling(path: str, tag: str, run_id: str) -> str:
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.bs-{tag}-{run_id}")


def publish_dir(fs: FileSystem, new: str, target: str, mode: str, run_id: str) -> None:
    """Make the complete directory `new` visible at `target`.

    Modes: `error`/`overwrite` swap the whole directory; `append` moves the new
    files in beside the old; `overwrite_partitions` swaps each partition
    directory present in `new`, leaving every other partition untouched.
    """
    if mode in ("error", "overwrite") or not fs.exists(target):
        if fs.exists(target):
            old = sibling(target, "old", run_id)
            fs.rename(target, old)
            try:
                fs.rename(new, target)
            except Exception:
                fs.rename(old, target)  # put yesterday's output back
                raise
            fs.delete(old)
        else:
            parent = posixpath.dirname(target.rstrip("/"))
            if parent:
                fs.mkdirs(parent)
            fs.rename(new, target)
        return
    if mode == "append":
        for rel in fs.files_under(new):
            dst = f"{target}/{rel}"
            fs.mkdirs(posixpath.dirname(dst))
            fs.rename(f"{new}/{rel}", dst)
        fs.delete(new)
        return
    if mode == "overwrite_partitions":
        leaves = fs.leaf_dirs(new)
        if "" in leaves:  # unpartitioned output: the whole table is the one partition
            publish_dir(fs, new, target, "overwrite", run_id)
            return
        for rel in leaves:
            dst = f"{target}/{rel}"
            if fs.exists(dst):
                old = sibling(dst, "old", run_id)
                fs.rename(dst, old)
                fs.rename(f"{new}/{rel}", dst)
                fs.delete(old)
            else:
                fs.mkdirs(posixpath.dirname(dst))
                fs.rename(f"{new}/{rel}", dst)
        fs.delete(new)
        return
    raise ValueError(f"unknown output mode {mode}")


def publish_quarantine(fs: FileSystem, new_q: str | None, q_path: str, mode: str, run_id: str) -> None:
    """Publish the run's quarantine tree `new_q` at `q_path` (mode `error` counts as overwrite
    there); with no bad rows, an overwrite removes the old quarantine: yesterday's bad rows
    are not today's."""
    q_mode = "overwrite" if mode == "error" else mode
    if new_q is not None:
        publish_dir(fs, new_q, q_path, q_mode, run_id)
    elif q_mode == "overwrite":
        fs.delete(q_path)


def partitions_in(fs: FileSystem, staging: str) -> set[str]:
    """Partition paths (`k=v/...`) the staged run wrote rows to, good or bad alike."""
    return {"/".join(rel.split("/")[2:]) for rel in fs.leaf_dirs(staging)}  # below bs__reason=/bs__column=


def drop_stale_partitions(fs: FileSystem, target: str, new: str | None, rescored: set[str], *, skip: int) -> None:
    """`overwrite_partitions`: delete the partitions of `target` this run rescored but has no new files for.

    Otherwise a row that moved between output and quarantine in a rescore (or a
    partition whose rows are all bad now) would keep its old copy. `skip` is the
    number of directory levels above the partition columns (2 for reason=/column=).
    """
    fresh = set(fs.leaf_dirs(new)) if new else set()
    for rel in fs.leaf_dirs(target):
        if "/".join(rel.split("/")[skip:]) in rescored and rel not in fresh:
            fs.delete(f"{target}/{rel}")


def build_quarantine_tree(fs: FileSystem, staging: str, run_id: str, quarantine: str, *,
                          tree: str | None = None) -> str | None:
    """Move staged bad rows into `<tree>/reason=X/column=Y/...` (by default a sibling of the
    quarantine); returns the tree, or None if there are no bad rows."""
    reasons = [n for n, d in fs.list(staging) if d and n.startswith(f"{REASON_COLUMN}=")
               and n != f"{REASON_COLUMN}={OK_REASON}"]
    if not reasons:
        return None
    tree = tree or sibling(quarantine, "new", run_id)
    for rdir in reasons:
        reason = rdir.split("=", 1)[1]
        for cdir, is_dir in fs.list(f"{staging}/{rdir}"):
            if not is_dir or not cdir.startswith(f"{BAD_COLUMN}="):
                continue
            column = cdir.split("=", 1)[1]
            dst = f"{tree}/reason={reason}/column={column}"
            fs.mkdirs(posixpath.dirname(dst))
            fs.rename(f"{staging}/{rdir}/{cdir}", dst)
    return tree


def new_output_dir(fs: FileSystem, staging: str, output: str, run_id: str, *, dst: str | None = None) -> str | None:
    """Move the staged predictions to `dst` (by default beside the output, ready to publish);
    returns `dst`, or None if there are none."""
    src = ok_dir(staging)
    if not fs.exists(src):
        return None
    if dst:
        fs.mkdirs(posixpath.dirname(dst.rstrip("/")))
    else:
        dst = sibling(output, "new", run_id)
    fs.rename(src, dst)
    return dst


def staged_counts(fs: FileSystem, staging: str) -> dict[str, int]:
    """Rows per reason as written: the staged files' Parquet footers, no Spark job."""
    counts: dict[str, int] = {}
    for rel in fs.files_under(staging):
        reason = rel.split("/", 1)[0].split("=", 1)[1]
        counts[reason] = counts.get(reason, 0) + fs.parquet_rows(f"{staging}/{rel}")
    return {k: v for k, v in counts.items() if v}


def mark_success(fs: FileSystem, path: str) -> None:
    fs.write_bytes(f"{path}/_SUCCESS", b"")


def cleanup(fs: FileSystem, *paths: Any) -> None:
    for p in paths:
        if p:
            fs.delete(p)


# --- object stores: a prefix per run, one commit object ---


def run_dir(path: str, run_id: str) -> str:
    """Where a run's files go below an output (or quarantine) on an object store."""
    return f"{path.rstrip('/')}/{RUNS_DIR}/{run_id}"


def committed_dirs(fs: FileSystem, manifest_path: str) -> set[str]:
    """The run prefixes the manifest at `manifest_path` names (none if there is no manifest)."""
    raw = fs.read_bytes(manifest_path)
    if raw is None:
        return set()
    try:
        output = json.loads(raw).get("output") or {}
    except (ValueError, AttributeError):  # not a manifest of ours: nothing to keep for it
        return set()
    return {p.rstrip("/") for p in (output.get("data_path"), output.get("quarantine_data_path")) if p}


def commit_run(fs: FileSystem, manifest_path: str, manifest: bytes, *, roots: list[str], current: set[str]) -> None:
    """Commit a run on an object store: write its manifest (one object: readers see the
    previous run or this one), then delete the run prefixes below `roots` that neither this
    manifest nor the previous one names (older runs, and runs killed before their commit).

    Object stores (`storage.is_object_store`: s3a://, gs://, abfs://, ...) cannot rename a
    directory atomically (S3A copies and deletes file by file), so there each run's files go
    under their own prefix, `<output>/_runs/<run_id>/` (and `<quarantine>/_runs/<run_id>/`,
    `run_dir`), and `<output>/_manifest.json`, one object written last, is the commit point:
    it names the run's prefixes (`output.data_path`, `output.quarantine_data_path`), and
    readers follow it. A run killed before that write leaves the previous manifest, and the
    prefixes it names, untouched.

    The previous run's prefixes stay until the next commit, so a reader that followed the
    previous manifest a moment ago can finish reading.
    """
    keep = {p.rstrip("/") for p in current} | committed_dirs(fs, manifest_path)
    fs.write_bytes(manifest_path, manifest)  # the commit point
    for root in roots:
        runs = f"{root.rstrip('/')}/{RUNS_DIR}"
        for name, is_dir in fs.list(runs):
            if is_dir and f"{runs}/{name}" not in keep:
                fs.delete(f"{runs}/{name}")
