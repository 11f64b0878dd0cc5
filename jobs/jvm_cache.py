"""`batchscore jvm-cache [--path [--class-path CP] | --force]`: the JVM class-data archive that
cuts local Spark start-up (the archive itself: batchscore/session/jvm_cache.py). `--dump FILE` is the child process
that builds it: a small scoring job on each lane whose JVM dumps the classes it loaded.

Exit 0; building prints the archive's path, `--path` prints the one a local session here
would use ("" if none).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from batchscore.jobs.runner import Job, Run, run_job
from batchscore.session import jvm_cache


def _workload(spark: object, root: str) -> None:
    """A small scoring run on each lane, so the archive holds the classes real runs load."""
    import numpy as np  # noqa: PLC0415 - the child process only
    import pyarrow as pa  # noqa: PLC0415 - the child process only
    import pyarrow.parquet as pq  # noqa: PLC0415 - the child process only
    import tensorflow as tf  # noqa: PLC0415 - the child process only

    from batchscore.jobs import score  # noqa: PLC0415 - the child process only: the whole scoring engine

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"output_0": tf.reduce_sum(features, axis=1)}

    model = os.path.join(root, "model")
    tiny = Tiny()
    tf.saved_model.save(tiny, model, signatures={"serving_default": tiny.serve})
    rng = np.random.default_rng(0)
    for part in range(2):
        os.makedirs(os.path.join(root, "input"), exist_ok=True)
        table = pa.table({"id": np.arange(part * 500, part * 500 + 500),
                          "features": list(rng.random((500, 4), np.float32))})
        pq.write_table(table, os.path.join(root, "input", f"part-{part}.parquet"))
    for lane in ("arrow", "dataframe"):
        config = os.path.join(root, f"{lane}.json")
        with open(config, "w", encoding="utf-8") as fh:
            json.dump({"input": {"path": os.path.join(root, "input"), "lane": lane, "filter": "id >= 0"},
                       "model": {"path": model, "batch_size": 256},
                       "output": {"path": os.path.join(root, f"out-{lane}"), "mode": "overwrite",
                                  "keep_columns": ["id"]}}, fh)
        if score.main(["--config", config, "--quiet"], spark=spark) != 0:
            raise SystemExit(f"the archive's scoring run failed on the {lane} lane")


def _dump(target: str) -> None:
    """Child process (`batchscore jvm-cache --dump`): run the workload in a session whose JVM
    dumps its classes to `target` at exit."""
    from batchscore.session.builder import build_session  # noqa: PLC0415 - the child process only

    with tempfile.TemporaryDirectory(prefix="batchscore-jvm-cache-") as root:
        spark = build_session({"spark.master": "local[2]"}, app_name="batchscore-jvm-cache", class_archive_dump=target)
        try:
            _workload(spark, root)
        finally:
            spark.stop()


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="print the archive local sessions use ('' if none) and exit")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.add_argument("--class-path", help="with --path: the session's driver classpath (default: the connector jars)")
    p.add_argument("--dump", help=argparse.SUPPRESS)  # internal: the child process that dumps


def _run(run: Run) -> None:
    args = run.args
    if args.dump:
        _dump(args.dump)
    elif args.path:
        from batchscore.session.builder import local_driver_class_path  # noqa: PLC0415 - pyspark is imported there

        path = jvm_cache.archive_path(local_driver_class_path() if args.class_path is None else args.class_path)
        print(path if path and os.path.isfile(path) else "")
    else:
        jvm_cache.build(force=args.force)


# `build` prints what it did; a failed build raises SystemExit with its reason.
JOB = Job(prog="batchscore jvm-cache", description=jvm_cache.__doc__.split("\n\n")[0], options=_options, run=_run,
          summary=lambda _: None, what="jvm-cache")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
