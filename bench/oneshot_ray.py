"""The Ray Data peer: read_parquet -> map_batches on an actor pool -> write_parquet.

Local Ray on `num_cpus=2`, bound to 127.0.0.1, no dashboard, no usage stats; an
actor pool of 2 (`ActorPoolStrategy(size=2)`), each actor reserving one half
logical CPU so the read and write tasks can run beside them. The actors hold the
same SavedModel through bench.bare_tf.load_predict (TF default thread pools, as the
other peers) and score `batch_size`-row batches. Run from
bench/.venv-ray (make bench-ray-venv) by `python -m bench.oneshot ray ...`.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

ACTORS = 2  # one per core of local[2]'s machine


def run_ray(*, data: str, model: str, input_name: str, columns: list[str], stacked: bool,
            shape: tuple[int, ...], batch_size: int, out: str, loads_dir: str | None,
            num_cpus: int = 2) -> dict[str, Any]:
    """Score `data` into `out` with Ray Data; returns {"model_loads": n} (counted by marker files)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        scorer = _scorer_class(model, input_name, columns, stacked, shape, batch_size, loads_dir)
        ds = ray.data.read_parquet(data, columns=["id", *columns], file_extensions=["parquet"])
        # Actors reserve half a logical CPU each: reserving all of them starves the read and
        # write tasks, which Ray Data does not fuse into an actor pool (the run hangs).
        ds = ds.map_batches(scorer, batch_size=batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=ACTORS), num_cpus=num_cpus / ACTORS / 2)
        ds.write_parquet(out)
    finally:
        ray.shutdown()
    loads = len(os.listdir(loads_dir)) if loads_dir and os.path.isdir(loads_dir) else None
    return {"model_loads": loads, "actors": ACTORS}


def _scorer_class(model: str, input_name: str, columns: list[str], stacked: bool,
                  shape: tuple[int, ...], batch_size: int, loads_dir: str | None) -> type:
    class Scorer:
        """One per actor: the model loads in __init__, then scores Arrow batches."""

        def __init__(self) -> None:
            from bench.bare_tf import load_predict

            self.predict = load_predict(model, input_name)
            if loads_dir:
                os.makedirs(loads_dir, exist_ok=True)
                open(os.path.join(loads_dir, f"{os.getpid()}-{time.time_ns()}"), "w").close()

        def __call__(self, batch: pa.Table) -> pa.Table:
            if stacked:  # D scalar columns -> x: [n, D]
                x = np.column_stack([batch.column(c).to_numpy() for c in columns]).astype(np.float32, copy=False)
            else:  # flat list column -> x: [n, *shape]
                flat = batch.column(columns[0]).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                x = flat.astype(np.float32, copy=False).reshape(-1, *shape)
            preds = np.concatenate([self.predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
            return pa.table({"id": batch.column("id"), "prediction": pa.array(preds, pa.float32())})

    return Scorer
