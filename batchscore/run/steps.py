"""A scoring run on the driver, as named steps: plan -> score into staging -> count and verify
-> publish -> manifest.

`run_scoring` takes a session and a validated `JobSpec` (it reads no config file and
builds no session) and returns the `RunManifest` it wrote last.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from batchscore.config.job_spec import JobSpec
from batchscore.core.clock import Clock, iso
from batchscore.core.columns import BAD_COLUMN, REASON_COLUMN
from batchscore.core.errors import BatchscoreError, ConfigError, InputError
from batchscore.core.spark_errors import translate_spark_error
from batchscore.core.storage import absolute, inside, is_object_store, pyarrow_uri
from batchscore.output import delta_output, publish
from batchscore.output.filesystem import FileSystem, filesystem_for
from batchscore.output.manifest import (
    MANIFEST_NAME,
    InputInfo,
    ModelInfo,
    OutputInfo,
    PlanningInfo,
    RunManifest,
    SparkInfo,
)
from batchscore.run.cluster import master, spark_conf
from batchscore.run.inputs import read_input
from batchscore.run.lane_choice import (
    UNSORTED_WRITE,
    arrow_batch_conf,
    choose_arrow_plan,
    sample_array_columns,
    temporary_conf,
)
from batchscore.run.planning import TaskPlanning, plan_tasks, task_slots
from batchscore.run.progress import scoring_progress
from batchscore.udfs.batches.arrow_filter import filter_failure
from batchscore.udfs.batches.binding import check_sample
from batchscore.udfs.host.client import executor_cores
from batchscore.udfs.lanes.arrow import ArrowPlan, corrupt_parquet_files, with_predictions_from_files
from batchscore.udfs.lanes.scoring import (
    ModelRuntime,
    ScoringPlan,
    arrow_schema_of,
    fixed_row_bytes,
    plan_scoring,
    with_predictions,
)
from batchscore.udfs.lanes.stats import TaskStats, merge_stats, model_loads, model_loads_by_executor
from batchscore.udfs.lanes.warmup import Warmup, start_warmup
from batchscore.udfs.model.distribution import make_model_source
from batchscore.udfs.model.placement import check_splittable
from batchscore.udfs.model.signature import ModelSignature, read_signature

log = logging.getLogger("batchscore")


@dataclass(frozen=True)
class RunPlan:
    """Everything decided on the driver before any scoring task runs."""

    spec: JobSpec
    run_id: str
    out_path: str  # qualified
    q_path: str  # qualified
    keep: list[str]  # keep columns, then partition columns
    signature: ModelSignature
    df: Any  # the input DataFrame (the DataFrame lane's source, and rows_in's count)
    scoring: ScoringPlan
    arrow_plan: ArrowPlan | None  # None: the DataFrame lane
    corrupt: list[str]  # input files skipped (input.ignore_corrupt_files)
    warmup: Warmup | None = None  # the warm-up job started while planning (model.warmup)
    planning: TaskPlanning | None = None  # slots, tasks and rebalancing (batchscore.run.planning)

    @property
    def lane(self) -> str:
        return "dataframe" if self.arrow_plan is None else "arrow"


@dataclass(frozen=True)
class Staged:
    """What the scoring write left in staging."""

    path: str
    scored: Any  # the scored DataFrame (its schema makes an empty output)
    stats: dict[str, Any]  # what its tasks did, each task once (udfs/lanes/stats.py)


@dataclass(frozen=True)
class Published:
    """Where the run's rows are now (the manifest's `output.data_path`, `quarantine_data_path`)."""

    data_path: str
    quarantine_data_path: str | None


@dataclass(frozen=True)
class Counts:
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    reasons: dict[str, int]  # quarantined rows by reason


def run_scoring(spark: Any, spec: JobSpec, *, run_id: str | None = None, clock: Clock | None = None) -> RunManifest:
    """Score `spec.input` with `spec.model` into the output and its quarantine; returns the manifest.

    Args:
        clock: the run's clock, when its accounting starts before this call (a job starts it
            at the process start, `Clock.from_process_start()`); by default it starts here.

    Raises:
        BatchscoreError: a user error (config, input, model, schema, bad rows with on_bad_rows=fail).
    """
    clock = clock or Clock()
    fs = filesystem_for(spark)
    plan = plan_run(spark, fs, spec, run_id=run_id or new_run_id(), clock=clock)
    staging = publish.staging_path(plan.out_path, plan.run_id)
    try:
        staged = score_into_staging(spark, plan, staging, clock=clock)
        counts = count_and_verify(fs, plan, staged)
        clock.phase("count")
        if spec.output.format == "delta":
            delta_output.publish_delta(
                spark, fs, staging=staged.path, scored=staged.scored, out_path=plan.out_path, q_path=plan.q_path,
                mode=spec.output.mode, partition_by=spec.output.partition_by, run_id=plan.run_id,
                rows_scored=counts.rows_scored)
            published = Published(plan.out_path, plan.q_path if fs.exists(plan.q_path) else None)
        else:
            published = publish_run(spark, fs, plan, staged)
    finally:
        publish.cleanup(fs, staging)
        if plan.warmup is not None:  # ended before the scoring tasks got its slots; cancelled if a run fails early
            plan.warmup.cancel()
    clock.phase("publish")
    stats = merge_stats(staged.stats, plan.warmup.stats if plan.warmup is not None else {})
    manifest = build_manifest(spark, plan, counts, stats, clock, published)
    write_manifest(fs, plan, manifest)
    return manifest


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _now() -> str:
    return iso(time.time())


# --- plan ---


def plan_run(spark: Any, fs: FileSystem, spec: JobSpec, *, run_id: str, clock: Clock) -> RunPlan:
    """Check paths, read the signature, start the warm-up, read the input, bind columns, choose
    the lane, check a sample.

    Raises:
        ConfigError, InputError, ModelError, SchemaError: before any scoring task runs (the
            warm-up, if started, is cancelled).
    """
    out_path, q_path = output_paths(fs, spec)
    if spec.output.format == "delta":
        delta_output.check_delta_output(spark, fs, out_path)
    signature = read_signature(absolute(spec.model.path), spec.model.signature)
    warmup = start_warmup(spark, tasks=task_slots(spark).count) if spec.model.warmup else None
    try:
        source = make_model_source(spark, signature.path, signature.fingerprint, spec.model.distribution)
        clock.phase("signature")
        return _plan_input(spark, fs, spec, signature, source, clock=clock,
                           ids=(run_id, out_path, q_path), warmup=warmup)
    except BaseException:
        if warmup is not None:
            warmup.cancel()
        raise


def _plan_input(spark: Any, fs: FileSystem, spec: JobSpec, signature: ModelSignature, source: Any, *,
                clock: Clock, ids: tuple[str, str, str], warmup: Warmup | None) -> RunPlan:
    """The input, its binding to the signature, the lane and the sample check."""
    clock.start_scoring()
    df = open_input(spark, fs, spec)
    clock.phase("input_and_schema")
    keep = [*spec.output.keep_columns, *(c for c in spec.output.partition_by if c not in spec.output.keep_columns)]
    schema = arrow_schema_of(df)
    runtime = ModelRuntime(spec.model.sharing, spec.model.placement, spec.model.gpu_memory_mb,
                           host_wait_ms=spec.model.host_wait_ms,
                           executor_cores=executor_cores(master(spark), spark_conf(spark).get("spark.executor.cores")))
    if runtime.sharing == "executor" and runtime.placement == "split":
        raise ConfigError("model.placement split needs model.sharing worker: the executor's model host "
                          "replicates the model on its device")
    if runtime.placement == "split":
        check_splittable(signature.path)
    scoring = plan_scoring(signature, schema, source, columns=spec.input.columns,
                           batch_size=spec.model.batch_size, keep_columns=keep,
                           rename=spec.output.rename, on_bad_rows=spec.quarantine.on_bad_rows,
                           pad=spec.input.pad, pad_multiple=spec.input.pad_multiple, mask=spec.input.mask,
                           runtime=runtime)
    slots = task_slots(spark)
    corrupt: list[str] = []
    if spec.input.ignore_corrupt_files and spec.input.format == "parquet":
        corrupt = corrupt_parquet_files(spark, spec.input.path, tasks=slots.count * 4)
        for f in corrupt:
            log.warning("skipping corrupt input file %s (input.ignore_corrupt_files)", f)
    arrow_plan = choose_arrow_plan(spark, spec.input, schema, scoring.input_columns, df=df,
                                   exclude=frozenset(corrupt), slots=slots.count)
    planning = plan_tasks(df, slots, arrow_plan=arrow_plan, batch_size=spec.model.batch_size)
    try:
        sample = sample_array_columns(df, scoring, arrow_plan)
    except Exception as e:  # noqa: BLE001 - e.g. a corrupt input file met while sampling
        raise filter_failure(e, spec.input.filter) or translate_spark_error(e) from None
    check_sample(scoring.feeds, sample)
    clock.phase("sample_and_checks")
    return RunPlan(spec, *ids, keep, signature, df, scoring, arrow_plan, corrupt, warmup, planning)


def output_paths(fs: FileSystem, spec: JobSpec) -> tuple[str, str]:
    """Qualified output and quarantine paths; refuse outputs inside the input or model, and
    an existing output under `output.mode: error`."""
    out = fs.qualify(spec.output.path)
    q = fs.qualify(spec.quarantine.path or spec.output.path.rstrip("/") + "_quarantine")
    sources = {"model.path": fs.qualify(spec.model.path)}
    if spec.input.format != "table":
        sources["input.path"] = fs.qualify(spec.input.path)
    for key, src in sources.items():
        for name, p in (("output.path", out), ("quarantine.path", q)):
            if inside(p, src) or inside(src, p):
                raise ConfigError(f"{name} '{p}' overlaps {key} '{src}'; write somewhere else")
    if inside(q, out) or inside(out, q):
        raise ConfigError(f"quarantine.path '{q}' overlaps output.path '{out}'")
    if is_object_store(out) or is_object_store(q):
        _check_object_store_output(fs, spec, out, q)
    elif spec.output.mode == "error" and fs.exists(out):
        raise ConfigError(f"output.path '{out}' exists and output.mode is 'error'; "
                          "choose overwrite, append or overwrite_partitions")
    if spec.output.mode == "overwrite_partitions" and not spec.output.partition_by:
        log.warning("output.mode overwrite_partitions without output.partition_by replaces the whole output")
    return out, q


def _check_object_store_output(fs: FileSystem, spec: JobSpec, out: str, q: str) -> None:
    """Object stores publish each run whole under its own prefix (batchscore/output/publish.py): the output
    and its quarantine both there, in mode error or overwrite; `error` refuses a committed
    output (a manifest), not the leftovers of a killed run."""
    if not (is_object_store(out) and is_object_store(q)):
        raise ConfigError(f"output.path '{out}' and quarantine.path '{q}' must both be on an object store "
                          "or both not: a run is committed by one manifest")
    if spec.output.mode not in ("error", "overwrite"):
        raise ConfigError(f"output.mode '{spec.output.mode}' is not supported on an object store ('{out}'): "
                          "each run is published whole under its own prefix; use overwrite with one "
                          "output.path per run (e.g. per date)")
    if spec.output.mode == "error" and fs.exists(f"{out}/{MANIFEST_NAME}"):
        raise ConfigError(f"output.path '{out}' holds a committed run and output.mode is 'error'; "
                          "choose overwrite")


def open_input(spark: Any, fs: FileSystem, spec: JobSpec) -> Any:
    """The input DataFrame; a missing path or a corrupt file met while Spark infers the schema is an InputError."""
    if spec.input.format != "table" and not fs.exists(fs.qualify(spec.input.path)):
        raise InputError(f"input.path '{spec.input.path}' does not exist")
    try:
        return read_input(spark, spec.input)
    except BatchscoreError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a corrupt file met while Spark infers the schema
        raise translate_spark_error(e) from None


# --- score into staging ---


def score_into_staging(spark: Any, plan: RunPlan, staging: str, *, clock: Clock) -> Staged:
    """Score every row and write it into `staging`, split by status (`bs__reason`, `bs__column`)
    and the output's partition columns, with Spark's committers; the tasks' stats rows are
    observed and dropped before the write (`TaskStats`)."""
    write_conf, task_stats = dict(UNSORTED_WRITE), TaskStats()
    if plan.arrow_plan is not None:
        scored = task_stats.observe(with_predictions_from_files(spark, plan.arrow_plan, plan.scoring))
    else:
        rebalance = plan.planning.tasks if plan.planning is not None and plan.planning.rebalanced else None
        scored = task_stats.observe(with_predictions(plan.df, plan.scoring, partitions=rebalance))
        write_conf.update(arrow_batch_conf(spark, fixed_row_bytes(arrow_schema_of(plan.df), plan.scoring)))
    log.info("scoring with the %s lane", plan.lane)
    clock.phase("sample_and_checks")
    try:
        with temporary_conf(spark, write_conf), scoring_progress(spark, plan.df) as progress:
            scored.write.mode("overwrite").partitionBy(
                REASON_COLUMN, BAD_COLUMN, *plan.spec.output.partition_by).parquet(staging)
            stats = task_stats.value
            progress.rows = int(stats.get("rows", 0))
    except Exception as e:  # noqa: BLE001 - a failed task: a user's bad filter or rows, or a real failure
        raise filter_failure(e, plan.spec.input.filter) or translate_spark_error(e) from None
    split_scoring_job(clock, stats)
    return Staged(staging, scored, stats)


def split_scoring_job(clock: Clock, stats: dict[str, Any]) -> None:
    """Close the scoring job's time as phases, from what its tasks reported:

    `python_worker_start` (submitted -> the first task's Python code runs), `tf_import_and_model_load`
    (the slowest worker's, inside scoring tasks), `scoring` (-> the last task's end) and `commit`
    (-> the write returned: Spark's job commit).
    """
    first, last = stats.get("first_task_at"), stats.get("last_task_end_at")
    if first is None or last is None:  # no task ran Python (empty input)
        clock.split([], name_rest="commit")
        return
    load = max((stats.get("tf_import_s", {}).get(w, 0.0) + stats.get("model_load_s", {}).get(w, 0.0)
                for w in stats.get("loads", {})), default=0.0)
    clock.split([("python_worker_start", first - clock.last_mark), ("tf_import_and_model_load", load),
                 ("scoring", last - first - load)], name_rest="commit")


# --- count and verify ---


def count_and_verify(fs: FileSystem, plan: RunPlan, staged: Staged) -> Counts:
    """Rows written per status, checked against rows read.

    Raises:
        RuntimeError: rows_in != rows_scored + rows_quarantined (nothing is published).
    """
    reasons = publish.staged_counts(fs, staged.path)
    rows_in = count_input(fs, plan)
    rows_scored = reasons.pop("ok", 0)
    rows_quarantined = sum(reasons.values())
    if rows_in != rows_scored + rows_quarantined:
        raise RuntimeError(
            f"accounting failed: rows_in={rows_in} != rows_scored={rows_scored} + "
            f"rows_quarantined={rows_quarantined}; nothing was published")
    return Counts(rows_in, rows_scored, rows_quarantined, reasons)


def count_input(fs: FileSystem, plan: RunPlan) -> int:
    """rows_in, counted apart from the scoring: Parquet footers of the files Spark lists when
    nothing filters rows, else a Spark count of the filtered input."""
    if plan.spec.input.format == "parquet" and not plan.spec.input.filter:
        skip = {pyarrow_uri(c) for c in plan.corrupt}
        return sum(fs.parquet_rows(f) for f in plan.df.inputFiles() if pyarrow_uri(f) not in skip)
    return int(plan.df.count())


# --- publish ---


def publish_run(spark: Any, fs: FileSystem, plan: RunPlan, staged: Staged) -> Published:
    """Make the staged output and quarantine visible by renames, in `output.mode`; on an
    object store, move them under the run's own prefixes (`write_manifest` commits them)."""
    if is_object_store(plan.out_path):
        return place_run(spark, fs, plan, staged)
    rename_into_place(spark, fs, plan, staged)
    return Published(plan.out_path, plan.q_path if fs.exists(plan.q_path) else None)


def place_run(spark: Any, fs: FileSystem, plan: RunPlan, staged: Staged) -> Published:
    """Object stores: the run's rows under `<output>/_runs/<run_id>` and `<quarantine>/_runs/<run_id>`,
    each copied once; nothing a reader follows changes until the manifest is written."""
    data = publish.run_dir(plan.out_path, plan.run_id)
    if publish.new_output_dir(fs, staged.path, plan.out_path, plan.run_id, dst=data) is None:
        write_empty_output(spark, fs, staged.scored, plan.out_path, plan.run_id, dst=data)
    bad = publish.build_quarantine_tree(fs, staged.path, plan.run_id, plan.q_path,
                                        tree=publish.run_dir(plan.q_path, plan.run_id))
    publish.mark_success(fs, data)
    return Published(data, bad)


def rename_into_place(spark: Any, fs: FileSystem, plan: RunPlan, staged: Staged) -> None:
    """Local disk and HDFS: publish by directory renames, in `output.mode`."""
    mode, out_path, q_path, run_id = plan.spec.output.mode, plan.out_path, plan.q_path, plan.run_id
    rescored = (publish.partitions_in(fs, staged.path)
                if mode == "overwrite_partitions" and plan.spec.output.partition_by else None)
    new_out = new_q = None
    try:
        new_out = publish.new_output_dir(fs, staged.path, out_path, run_id)
        if new_out is None and (rescored is None or not fs.exists(out_path)):
            new_out = write_empty_output(spark, fs, staged.scored, out_path, run_id)
        new_q = publish.build_quarantine_tree(fs, staged.path, run_id, q_path)
        if rescored is not None:  # a rescored partition keeps no rows of the last run beside the new ones
            publish.drop_stale_partitions(fs, out_path, new_out, rescored, skip=0)
            publish.drop_stale_partitions(fs, q_path, new_q, rescored, skip=2)
        if new_out is not None:
            publish.publish_dir(fs, new_out, out_path, mode, run_id)
            new_out = None
        publish.publish_quarantine(fs, new_q, q_path, mode, run_id)
        new_q = None
        publish.mark_success(fs, out_path)
    finally:
        publish.cleanup(fs, new_out, new_q)


def write_empty_output(spark: Any, fs: FileSystem, scored: Any, out_path: str, run_id: str, *,
                       dst: str | None = None) -> str:
    """No row was scored: an empty dataset with the output schema at `dst` (by default beside
    the output, ready to publish)."""
    schema = scored.drop(REASON_COLUMN, BAD_COLUMN).schema
    dst = dst or publish.sibling(out_path, "new", run_id)
    spark.createDataFrame([], schema).coalesce(1).write.parquet(dst)
    fs.delete(f"{dst}/_SUCCESS")
    return dst


# --- manifest ---


def write_manifest(fs: FileSystem, plan: RunPlan, manifest: RunManifest) -> None:
    """Write the manifest last. On an object store this is the commit (`publish.commit_run`)."""
    path = f"{plan.out_path}/{MANIFEST_NAME}"
    if not is_object_store(plan.out_path):
        fs.write_bytes(path, manifest.to_json())
        return
    current = {p for p in (manifest.output.data_path, manifest.output.quarantine_data_path) if p}
    publish.commit_run(fs, path, manifest.to_json(), roots=[plan.out_path, plan.q_path], current=current)


def build_manifest(spark: Any, plan: RunPlan, counts: Counts, stats: dict[str, Any], clock: Clock,
                   published: Published | None = None) -> RunManifest:
    """The run's manifest from its plan, counts, the tasks' stats, its clock and where it published."""
    spec, sig = plan.spec, plan.signature
    clock.phase("manifest")
    seconds_scoring = time.time() - clock.t_score
    corrupt = set(plan.corrupt) | set(plan.arrow_plan.corrupt_files if plan.arrow_plan else [])
    return RunManifest(
        status="succeeded", run_id=plan.run_id,
        rows_in=counts.rows_in, rows_scored=counts.rows_scored, rows_quarantined=counts.rows_quarantined,
        quarantine_reasons=counts.reasons,
        model=ModelInfo(sig.path, sig.fingerprint, sig.signature, spec.model.distribution, spec.model.batch_size,
                        spec.model.sharing, spec.model.placement, stats.get("pipeline_stages")),
        input=InputInfo(spec.input.path, spec.input.format, spec.input.filter),
        output=OutputInfo(plan.out_path, spec.output.mode, plan.q_path, [*plan.keep, *plan.scoring.output_names],
                          data_path=published.data_path if published else None,
                          quarantine_data_path=published.quarantine_data_path if published else None,
                          format=spec.output.format),
        lane=plan.lane,
        planning=PlanningInfo(**dataclasses.asdict(plan.planning)) if plan.planning else PlanningInfo(),
        started_at=clock.started_at,
        finished_at=_now(),
        seconds_total=clock.seconds_total(),
        seconds_scoring=round(seconds_scoring, 3),
        seconds_by_phase=clock.phases,
        workers=worker_timings(stats, clock.origin),
        devices=dict(sorted(stats.get("devices", {}).items())),
        rows_per_second=round(counts.rows_in / seconds_scoring, 1) if seconds_scoring > 0 else None,
        model_loads=model_loads(stats),
        model_loads_by_executor=model_loads_by_executor(stats),
        model_calls=stats.get("model_calls", 0),
        max_rows_per_call=stats.get("max_call_rows", 0),
        max_rows_per_batch=stats.get("max_batch_rows", 0),
        python_workers=len(stats.get("loads", {})),
        peak_worker_rss_mb=round(max(stats.get("peak_rss_mb", {}).values(), default=0), 1),
        corrupt_files_skipped=len(corrupt) + int(stats.get("corrupt_files", 0)),
        spark=SparkInfo(spark.version, master(spark), class_archive(spark)),
    )


def class_archive(spark: Any) -> str | None:
    """The class-data archive in the driver's Java options (`-XX:SharedArchiveFile=`), if any."""
    options = spark_conf(spark).get("spark.driver.extraJavaOptions", "") or ""
    return next((o.split("=", 1)[1] for o in options.split() if o.startswith("-XX:SharedArchiveFile=")), None)


_WORKER_SECONDS = ("daemon_prestarted", "daemon_tf_import_s", "warmup_tf_import_s", "tf_import_s", "model_load_s")


def worker_timings(stats: dict[str, Any], origin: float) -> dict[str, dict[str, float]]:
    """Per Python worker (warm-up or scoring): `started_s` (its process start, seconds after the
    run's origin), model `loads`, and the seconds it spent importing TF in the warm-up and
    importing TF and loading the model in scoring tasks (`daemon_tf_import_s`: the import its
    Python daemon did once before forking it, udfs/daemon.py; `daemon_prestarted` 1 when that
    daemon was the one started while the JVM started; `daemon_launched_s` when Spark launched
    that daemon, seconds after the origin)."""
    out: dict[str, dict[str, float]] = {}
    for w in sorted(set(stats.get("loads", {})) | set(stats.get("warmup_tf_import_s", {}))):
        row: dict[str, float] = {"loads": stats.get("loads", {}).get(w, 0)}
        started = stats.get("worker_started_at", {}).get(w)
        if started is not None:
            row["started_s"] = round(started - origin, 3)
        launched = stats.get("daemon_launched_at", {}).get(w)
        if launched is not None:
            row["daemon_launched_s"] = round(launched - origin, 3)
        for k in _WORKER_SECONDS:
            if w in stats.get(k, {}):
                row[k] = round(stats[k][w], 3)
        out[w] = row
    return out
