"""Datasets of the cold benchmark: every rows point of the MLP sweep shares its files.

File `i` of an MLP dataset depends only on `i` and the rows per file
(bench.workloads.mlp_file_table), so the files are made once into a pool,
`bench/work/data/mlp-pool-<pf>pf/`, and each rows point is a directory of hard links
to the first `rows / pf` of them (no extra disk; Spark, pyarrow and Ray see plain
files). The 50M-row soak set and the sweep's 1M-20M points share the same pool
(~33 MB a 250k-row file: 2.6 GB for 20M rows, 6.6 GB for 50M).
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq

from bench.workloads import DATA_VERSION, READY, ensure_mlp_data, mlp_file_table, mlp_row_group_rows


def _pool_file(pool: str, i: int, rows_per_file: int) -> str:
    """File `i` of the pool, written (atomically) if missing."""
    path = os.path.join(pool, f"part-{i:05d}.parquet")
    if not os.path.isfile(path):
        tmp = path + ".tmp"
        table = mlp_file_table(i * rows_per_file, rows_per_file, i)
        # random floats: dictionary pages only add bytes (49 MB a 250k-row file with, 33 MB without)
        pq.write_table(table, tmp, row_group_size=mlp_row_group_rows(rows_per_file), use_dictionary=False)
        os.replace(tmp, path)
    return path


def ensure_mlp_linked(root: str, rows: int, *, rows_per_file: int) -> str:
    """The MLP dataset of `rows` rows as hard links into the shared pool; returns its directory.

    Falls back to bench.workloads.ensure_mlp_data when `rows` is not a multiple of
    `rows_per_file` (the last file would differ from the pool's).
    """
    if rows % rows_per_file:
        return ensure_mlp_data(root, rows, rows_per_file=rows_per_file)
    path = os.path.join(root, "data", f"mlp-{rows}r-{rows_per_file}pf")
    spec = {"kind": "mlp", "rows": rows, "rows_per_file": rows_per_file, "version": DATA_VERSION}
    try:
        with open(os.path.join(path, READY)) as fh:
            if json.load(fh) == spec:
                return path
    except (OSError, ValueError):
        pass
    pool = os.path.join(root, "data", f"mlp-pool-{rows_per_file}pf")
    os.makedirs(pool, exist_ok=True)
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(tmp)
    for i in range(rows // rows_per_file):
        os.link(_pool_file(pool, i, rows_per_file), os.path.join(tmp, f"part-{i:05d}.parquet"))
    with open(os.path.join(tmp, READY), "w") as fh:
        json.dump(spec, fh)
    os.replace(tmp, path)
    return path
