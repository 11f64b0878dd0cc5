"""Stage, then publish: output appears only when complete, the old one stays until then.

Spark writes everything into a hidden staging directory beside the output,
split by row status (`bs__reason=ok` for predictions, other reasons for the
quarantine). Publishing is then a few directory renames.
"""
from __future__ import annotations

import posixpath
from typing import Any

from batchscore.udfs.batching import BAD_COLUMN, NO_COLUMN, OK_REASON, REASON_COLUMN
from batchscore.udfs.storage import HadoopFs


def staging_path(output: str, run_id: str) -> str:
    parent, name = posixpath.split(output.rstrip("/"))
    return posixpath.join(parent, f".{name}.bs-staging-{run_id}")


def ok_dir(staging: str) -> str:
    return f"{staging}/{REASON_COLUMN}={OK_REASON}/{BAD_COLUMN}={NO_COLUMN}"


def sibling(path: str, tag: str, run_id: str) -> str:
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.bs-{tag}-{run_id}")


def publish_dir(fs: HadoopFs, new: str, target: str, mode: str, run_id: str) -> None:
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


def partitions_in(fs: HadoopFs, staging: str) -> set[str]:
    """Partition paths (`k=v/...`) the staged run wrote rows to, good or bad alike."""
    return {"/".join(rel.split("/")[2:]) for rel in fs.leaf_dirs(staging)}  # below bs__reason=/bs__column=


def drop_stale_partitions(fs: HadoopFs, target: str, new: str | None, rescored: set[str], *, skip: int) -> None:
    """`overwrite_partitions`: delete the partitions of `target` this run rescored but has no new files for.

    Otherwise a row that moved between output and quarantine in a rescore (or a
    partition whose rows are all bad now) would keep its old copy. `skip` is the
    number of directory levels above the partition columns (2 for reason=/column=).
    """
    fresh = set(fs.leaf_dirs(new)) if new else set()
    for rel in fs.leaf_dirs(target):
        if "/".join(rel.split("/")[skip:]) in rescored and rel not in fresh:
            fs.delete(f"{target}/{rel}")


def build_quarantine_tree(fs: HadoopFs, staging: str, run_id: str, quarantine: str) -> str | None:
    """Move staged bad rows into `<sibling>/reason=X/column=Y/...`; None if there are none."""
    reasons = [n for n, d in fs.list(staging) if d and n.startswith(f"{REASON_COLUMN}=")
               and n != f"{REASON_COLUMN}={OK_REASON}"]
    if not reasons:
        return None
    tree = sibling(quarantine, "new", run_id)
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


def new_output_dir(fs: HadoopFs, staging: str, output: str, run_id: str) -> str | None:
    """Move the staged predictions beside the output, ready to publish; None if there are none."""
    src = ok_dir(staging)
    if not fs.exists(src):
        return None
    dst = sibling(output, "new", run_id)
    fs.rename(src, dst)
    return dst


def staged_counts(fs: HadoopFs, staging: str) -> dict[str, int]:
    """Rows per reason as written: the staged files' Parquet footers, no Spark job."""
    counts: dict[str, int] = {}
    for rel in fs.files_under(staging):
        reason = rel.split("/", 1)[0].split("=", 1)[1]
        counts[reason] = counts.get(reason, 0) + fs.parquet_rows(f"{staging}/{rel}")
    return {k: v for k, v in counts.items() if v}


def mark_success(fs: HadoopFs, path: str) -> None:
    fs.write_bytes(f"{path}/_SUCCESS", b"")


def cleanup(fs: HadoopFs, *paths: Any) -> None:
    for p in paths:
        if p:
            fs.delete(p)
