"""The per-task costs removed in Python workers: gc over TF's objects, re-reading Spark's zips."""
from __future__ import annotations

import importlib
import sys
import zipfile
import zipimport
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from batchscore.udfs.model import worker_tuning


def _zip_with_package(path: str, package: str) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{package}/__init__.py", "VALUE = 1\n")
        z.writestr(f"{package}/inner.py", "VALUE = 2\n")
    return path


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="zip invalidation is lazy from Python 3.12 on")
@pytest.mark.parametrize("spark_archive", ["pyspark.zip", "spark-core_2.13-4.1.1.jar"])
def test_spark_zip_importers_keep_their_directory_and_others_do_not(tmp_path, monkeypatch,
                                                                     spark_archive: str) -> None:
    spark_zip = _zip_with_package(str(tmp_path / spark_archive), "bs_fake_spark")
    (tmp_path / "other").mkdir()
    other_zip = _zip_with_package(str(tmp_path / "other" / "deps.zip"), "bs_fake_deps")
    monkeypatch.syspath_prepend(spark_zip)
    monkeypatch.syspath_prepend(other_zip)
    for name in ("bs_fake_spark", "bs_fake_spark.inner", "bs_fake_deps", "bs_fake_deps.inner"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("bs_fake_spark.inner")
    importlib.import_module("bs_fake_deps.inner")

    changed = worker_tuning.keep_spark_zip_directories()
    assert changed >= 2  # the archive root and the package directory inside it
    assert worker_tuning.keep_spark_zip_directories() == 0  # idempotent

    directories: dict[str, Any] = zipimport._zip_directory_cache  # type: ignore[attr-defined]  # private: not in typeshed
    spark_dir = directories[spark_zip]
    other_dir = directories[other_zip]
    importlib.invalidate_caches()
    assert directories[spark_zip] is spark_dir
    assert directories[other_zip] is not other_dir
    # what the archive holds still imports
    monkeypatch.delitem(sys.modules, "bs_fake_spark.inner")
    assert importlib.import_module("bs_fake_spark.inner").VALUE == 2


def test_freeze_moves_what_exists_out_of_the_collector() -> None:
    import gc

    def collected() -> set[int]:  # ids of what later gc passes walk (the frozen generation is not listed)
        return {id(o) for o in gc.get_objects()}

    try:
        worker_tuning.freeze_long_lived_objects()
        assert gc.get_freeze_count() > 0
        later = [[i] for i in range(1000)]  # e.g. a second model loaded into the same worker
        assert id(later) in collected() and id(later[-1]) in collected()
        worker_tuning.freeze_long_lived_objects()
        # by identity, not by count: objects frozen earlier may be freed by reference counting meanwhile
        walked = collected()
        assert id(later) not in walked and not any(id(x) in walked for x in later)
    finally:
        gc.unfreeze()


def _probe(plan: Any) -> Any:
    """A mapInArrow function: score one batch with the real engine, then report the worker's state."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import gc
        import os
        import sys
        import zipimport

        from batchscore.udfs.lanes.scoring import score_batches

        scored = 0
        for b in batches:
            for out in score_batches(plan, [b]):
                scored += out.num_rows
        # Spark puts pyspark.zip, py4j's zip and its spark-core jar first on the workers' sys.path,
        # so every import leaves a zipimporter for each; nothing else here is a zip
        zips = [f for f in sys.path_importer_cache.values() if type(f) is zipimport.zipimporter]
        jars = sum(f.archive.endswith(".jar") for f in zips)
        not_kept = " ".join(f.archive + "/" + f.prefix for f in zips if "invalidate_caches" not in vars(f))
        yield pa.record_batch([pa.array([os.getpid()]), pa.array([scored]), pa.array([gc.get_freeze_count()]),
                               pa.array([len(zips)]), pa.array([jars]), pa.array([not_kept])],
                              names=["pid", "scored", "frozen", "zips", "jars", "not_kept"])

    return run


def test_a_scoring_worker_freezes_the_model_and_keeps_spark_zips(spark, demo_input: str, demo_model: str) -> None:
    from batchscore.demo_data import NUMERIC
    from batchscore.udfs.lanes.scoring import arrow_schema_of, plan_scoring
    from batchscore.udfs.model.distribution import make_model_source
    from batchscore.udfs.model.signature import read_signature

    sig = read_signature(demo_model)
    df = spark.read.parquet(demo_input)
    plan = plan_scoring(sig, arrow_schema_of(df), make_model_source(spark, demo_model,
                                                                    sig.fingerprint, "direct"),
                        columns={"numeric": list(NUMERIC)}, batch_size=64, keep_columns=["id"])
    rows = (df.select(*plan.input_columns).repartition(2)
            .mapInArrow(_probe(plan), "pid long, scored long, frozen long, zips long, jars long, not_kept string")
            .collect())
    assert sum(r.scored for r in rows) == df.count()
    for r in rows:
        # TF and the model (hundreds of thousands of objects) are out of the per-task gc.collect()
        assert r.frozen > 100_000, r
        if sys.version_info < (3, 12):
            assert r.zips > 0 and r.jars > 0 and r.not_kept == "", r
