"""Train a model under a `tf.distribute` strategy with a custom training loop, checkpoint it, export it.

One code path for every strategy; the loop is TensorFlow's own, not `model.fit` (see `fit`).
The run, as a table of contents: `prepare` (plan the data, identical on every worker)
-> `fit` (restore the last checkpoint, train, validate and checkpoint each epoch) ->
`finish` (the chief exports the SavedModel and writes `_train_manifest.json`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchscore.config.train_spec import TrainSpec
from batchscore.core.errors import ConfigError
from batchscore.training import parquet_reader
from batchscore.training.models import export_saved_model, input_shape, model_builder
from batchscore.training.parquet_reader import DatasetPlan

log = logging.getLogger(__name__)

MANIFEST_NAME = "_train_manifest.json"
STATE_NAME = "train_state.json"  # in the checkpoint directory: which run its checkpoints belong to
AUC_BINS = 1000  # validation AUC from score histograms, summed over replicas
NORMALIZE_SAMPLE_ROWS = 20_000
# Keys whose change makes old checkpoints another run's (epochs, strategy, workers may change on a rerun).
_RUN_KEYS = ("data", "filter", "validation", "key", "features", "label", "task", "classes", "model", "hidden",
             "input_shape", "normalize", "seed")


@dataclass(frozen=True)
class Role:
    """This process's place among the workers (one worker outside multi_worker)."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class TrainData:
    """What every worker derives from the config and the data alone, so all agree without talking."""

    train: DatasetPlan
    validation: DatasetPlan | None  # a separate validation set, else None
    validation_fraction: float  # held out of `train` by the key's hash (0 with a separate set)
    classes: int
    mean: np.ndarray | None
    variance: np.ndarray | None
    label_scale: tuple[float, float] | None = None  # regression: the label's (mean, std), undone in the model

    @property
    def fingerprint(self) -> str:
        parts = [self.train.fingerprint, self.validation.fingerprint if self.validation else ""]
        return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def prepare(spec: TrainSpec, *, row_filter: Any = None) -> TrainData:
    """Plan the training (and validation) data, count the classes, sample the feature scales.

    Args:
        row_filter: `(expression, columns, partition types)` of `train.filter`, made on the driver.
    """
    t = spec.train
    fraction = t.validation if isinstance(t.validation, float) else 0.0
    expr, columns, types = row_filter or (None, (), {})
    kind: parquet_reader.LabelKind = "int" if t.task == "multiclass" else "float"
    plan = parquet_reader.plan_dataset(t.data, features=t.features, label=t.label, key=t.key if fraction else None,
                                       label_kind=kind, row_filter=expr, filter_columns=columns,
                                       partition_types=types)
    validation = None
    if isinstance(t.validation, str):
        validation = parquet_reader.plan_dataset(t.validation, features=t.features, label=t.label, key=None,
                                                 label_kind=kind)
    classes = t.classes or (parquet_reader.label_max(plan) + 1 if t.task == "multiclass" else 1)
    mean = variance = label_scale = None
    if t.normalize:
        x, y = parquet_reader.sample_rows(plan, rows=NORMALIZE_SAMPLE_ROWS, seed=t.seed)  # x: [n, D]
        mean, variance = x.mean(axis=0), x.var(axis=0)
        if t.task == "regression":
            label_scale = (float(y.mean()), float(y.std()) or 1.0)
    return TrainData(plan, validation, fraction, classes, mean, variance, label_scale)


def make_local_strategy(spec: TrainSpec) -> Any:
    """The strategy of `default` or `mirrored` (over the GPUs, else `train.devices` logical CPUs).

    Raises:
        ConfigError: mirrored needs more logical CPU devices than TensorFlow, already
            initialised in this process, has.
    """
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    if spec.train.strategy == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        devices = [f"/gpu:{i}" for i in range(min(len(gpus), spec.train.devices or len(gpus)))]
        return tf.distribute.MirroredStrategy(devices=devices)
    n = spec.train.devices or 2
    use_logical_cpus(n)
    return tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(n)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def use_logical_cpus(n: int) -> None:
    """Split the CPU into `n` logical devices (only before TensorFlow's runtime starts)."""
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise ConfigError(f"config key 'train.devices': {n} logical CPU devices need a process whose "
                              f"TensorFlow has not started yet (this one has {have}); run `batchscore train` "
                              "in its own process") from None


@dataclass
class Fitted:
    """What `fit` returns: the trained model, its builder, and the epochs' figures."""

    model: Any
    build: Callable[[], Any]
    history: list[dict[str, Any]]
    resumed_from_epoch: int
    replicas: int
    seconds: float = 0.0
    rows: int = 0


@dataclass
class _Loop:
    """The compiled steps of one run (built once under the strategy's scope)."""

    model: Any
    optimizer: Any
    train_step: Any
    eval_step: Any
    epoch: Any
    checkpoint: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def fit(spec: TrainSpec, data: TrainData, strategy: Any, *, role: Role | None = None,
        dataset_fn: Callable[..., Any] | None = None) -> Fitted:
    """Train under `strategy`; restore from and write checkpoints in `spec.checkpoint_dir`.

    Strategies: the default, `MirroredStrategy` (one machine's GPUs or logical CPUs), and
    `MultiWorkerMirroredStrategy` in Spark barrier tasks (multiworker.py), under which Keras 3
    does not support `model.fit` (keras-team/keras#20585). So `distribute_datasets_from_function`
    feeds each worker its shard, `strategy.run` computes the per-replica loss, and the Keras 3
    optimizer all-reduces the gradients as it applies them. A worker whose shard runs out first
    gets empty batches (tf.distribute's partial-batch handling): every worker takes the same steps.

    Args:
        dataset_fn: `(plan, subset, shard, num_shards, batch_size, epoch, shuffle)` -> a
            `tf.data.Dataset` of (features [batch, D], label [batch]); default: the arrow reader.
    """
    import keras  # noqa: PLC0415 - seconds of import: only where a model trains

    t = spec.train
    role = role or Role()
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise ConfigError(f"config key 'train.batch_size' {t.batch_size} must be a multiple of the "
                          f"{replicas} replicas")
    keras.utils.set_random_seed(t.seed)
    build = model_builder(t, dim=data.train.dim, classes=data.classes, mean=data.mean, variance=data.variance,
                          label_scale=data.label_scale)
    loop = _build_loop(spec, data, strategy, build)
    start = _restore(spec, data, loop, role)
    history = _read_history(spec) if start else []
    read = dataset_fn or _arrow_dataset(spec, data)
    t0, rows = time.time(), 0
    for epoch in range(start, t.epochs):
        e0 = time.time()
        loss_sum, count = _run_epoch(strategy, loop.train_step, read, epoch, batch_size=t.batch_size)
        metrics = _validate(spec, strategy, loop.eval_step, read, epoch, data)
        rows += count
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(count, 1), "rows": count, **metrics,
                        "seconds": round(time.time() - e0, 3)})
        loop.epoch.assign(epoch + 1)
        _save(spec, loop, role, history)
        log.info("epoch %d/%d: %s", epoch + 1, t.epochs, history[-1])
    return Fitted(loop.model, build, history, start, replicas, time.time() - t0, rows)


def _build_loop(spec: TrainSpec, data: TrainData, strategy: Any, build: Callable[[], Any]) -> _Loop:
    import keras  # noqa: PLC0415 - seconds of import: only where a model trains
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    t = spec.train
    shape = input_shape(t, data.train.dim)
    with strategy.scope():
        model = build()
        optimizer = keras.optimizers.Adam(learning_rate=t.learning_rate)
        optimizer.build(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    global_batch = t.batch_size

    def replica_train(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.reshape(x, [-1, *shape])  # [batch, D] -> [batch, *input_shape]
        with tf.GradientTape() as tape:
            per_example = _per_example_loss(t.task, model(x, training=True), y)  # [batch]
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))  # all-reduced inside
        return tf.reduce_sum(per_example), tf.cast(tf.size(y), tf.float32)

    def replica_eval(x: Any, y: Any) -> Any:
        logits = model(tf.reshape(x, [-1, *shape]), training=False)
        return _eval_sums(t.task, logits, y)  # [3 + 2 * AUC_BINS]

    @tf.function
    def train_step(x: Any, y: Any) -> tuple[Any, Any]:
        loss, n = strategy.run(replica_train, args=(x, y))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", n, axis=None)

    @tf.function
    def eval_step(x: Any, y: Any) -> Any:
        return strategy.reduce("SUM", strategy.run(replica_eval, args=(x, y)), axis=None)

    return _Loop(model, optimizer, train_step, eval_step, epoch)


def _per_example_loss(task: str, logits: Any, y: Any) -> Any:
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    if task == "binary":
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits[:, 0])
    if task == "multiclass":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return tf.square(logits[:, 0] - y)


def _eval_sums(task: str, logits: Any, y: Any) -> Any:
    """[loss sum, rows, correct (or |error| sum), positives' score histogram, negatives'] of one batch."""
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    loss = tf.reduce_sum(_per_example_loss(task, logits, y))
    n = tf.cast(tf.size(y), tf.float32)
    zeros = tf.zeros([2 * AUC_BINS])
    if task == "binary":
        p = tf.sigmoid(logits[:, 0])
        third = tf.reduce_sum(tf.cast(tf.equal(tf.cast(p > 0.5, tf.float32), y), tf.float32))
        bins = tf.clip_by_value(tf.cast(p * AUC_BINS, tf.int32), 0, AUC_BINS - 1)
        positive = tf.cast(y > 0.5, tf.int32)
        hist = tf.math.bincount(bins + AUC_BINS * (1 - positive), minlength=2 * AUC_BINS,
                                maxlength=2 * AUC_BINS, dtype=tf.float32)
        return tf.concat([tf.stack([loss, n, third]), hist], axis=0)
    if task == "multiclass":
        third = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.float32))
    else:
        third = tf.reduce_sum(tf.abs(logits[:, 0] - y))
    return tf.concat([tf.stack([loss, n, third]), zeros], axis=0)


def _arrow_dataset(spec: TrainSpec, data: TrainData) -> Callable[..., Any]:
    t = spec.train

    def read(subset: str, shard: int, num_shards: int, batch_size: int, epoch: int, shuffle: bool) -> Any:
        plan = data.validation if subset == "validation" and data.validation is not None else data.train
        split: parquet_reader.Subset = "all" if plan is data.validation else "validation" if subset == "validation" \
            else "train"
        return parquet_reader.tf_dataset(plan, batch_size=batch_size, shard=shard, num_shards=num_shards,
                                         subset=split, validation=data.validation_fraction, seed=t.seed,
                                         epoch=epoch, shuffle=shuffle, buffer_rows=t.shuffle_buffer)

    return read


def _distributed(strategy: Any, read: Callable[..., Any], subset: str, epoch: int, *, shuffle: bool,
                 batch_size: int) -> Any:
    def dataset_fn(ctx: Any) -> Any:
        per_replica = ctx.get_per_replica_batch_size(batch_size)
        return read(subset, ctx.input_pipeline_id, ctx.num_input_pipelines, per_replica, epoch, shuffle)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _run_epoch(strategy: Any, step: Any, read: Callable[..., Any], epoch: int, *,
               batch_size: int) -> tuple[float, int]:
    """One pass over this worker's shuffled training shard: (the summed loss, the rows) over all workers."""
    loss_sum, count = 0.0, 0.0
    for x, y in _distributed(strategy, read, "train", epoch, shuffle=True, batch_size=batch_size):
        loss, n = step(x, y)
        loss_sum += float(loss)
        count += float(n)
    return loss_sum, int(count)


def _validate(spec: TrainSpec, strategy: Any, step: Any, read: Callable[..., Any], epoch: int,
              data: TrainData) -> dict[str, float]:
    """The validation metrics of this epoch's model (empty without a validation set)."""
    if data.validation is None and data.validation_fraction <= 0:
        return {}
    sums = np.zeros(3 + 2 * AUC_BINS)
    for x, y in _distributed(strategy, read, "validation", 0, shuffle=False, batch_size=spec.train.batch_size):
        sums += step(x, y).numpy()
    return validation_metrics(spec.train.task, sums)


def validation_metrics(task: str, sums: np.ndarray) -> dict[str, float]:
    """Metrics from summed `_eval_sums` vectors."""
    loss, n, third = sums[:3]
    if n == 0:
        return {}
    out = {"val_loss": float(loss / n), "val_rows": int(n)}
    if task == "binary":
        out["val_accuracy"] = float(third / n)
        auc = histogram_auc(sums[3:3 + AUC_BINS], sums[3 + AUC_BINS:])
        if auc is not None:
            out["val_auc"] = auc
    elif task == "multiclass":
        out["val_accuracy"] = float(third / n)
    else:
        out["val_rmse"] = float(np.sqrt(loss / n))
        out["val_mae"] = float(third / n)
    return out


def histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """ROC AUC from score histograms (ties within a bin count half): exact up to the bin width."""
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    neg_below = np.cumsum(negatives) - negatives  # negatives in lower bins
    return float(((positives * (neg_below + negatives / 2)).sum()) / (n_pos * n_neg))


# --- checkpoints ---


def run_fingerprint(spec: TrainSpec, data: TrainData) -> str:
    """Which run checkpoints belong to: the data and the keys that shape the model."""
    keys = {k: getattr(spec.train, k) for k in _RUN_KEYS}
    return hashlib.sha256(json.dumps([keys, data.fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _worker_dir(spec: TrainSpec, role: Role, loop: _Loop) -> str:
    """The chief checkpoints into the checkpoint directory; the others into a local scratch folder
    (their copies are never read: every worker restores from the chief's)."""
    if role.is_chief:
        return spec.checkpoint_dir
    if "scratch" not in loop.extra:
        loop.extra["scratch"] = tempfile.mkdtemp(prefix=f"batchscore-train-worker-{role.index}-")
    return str(loop.extra["scratch"])


def _restore(spec: TrainSpec, data: TrainData, loop: _Loop, role: Role) -> int:
    """Restore the latest checkpoint of this same run; the epoch to start from (0: a fresh start)."""
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    root = spec.checkpoint_dir
    loop.checkpoint = tf.train.Checkpoint(model=loop.model, optimizer=loop.optimizer, epoch=loop.epoch)
    state = _read_json(os.path.join(root, STATE_NAME))
    fingerprint = run_fingerprint(spec, data)
    latest = tf.train.latest_checkpoint(root) if state.get("run") == fingerprint else None
    if latest is None:
        if role.is_chief and os.path.isdir(root):
            shutil.rmtree(root)  # another run's (or an unfinished first epoch's): start afresh
        if role.is_chief:
            _write_json(os.path.join(root, STATE_NAME), {"run": fingerprint})
        return 0
    loop.checkpoint.restore(latest).expect_partial()
    log.info("resuming from %s (epoch %d)", latest, int(loop.epoch.numpy()))
    return int(loop.epoch.numpy())


def _save(spec: TrainSpec, loop: _Loop, role: Role, history: list[dict[str, Any]]) -> None:
    """Every worker saves (collectives may run in a save); only the chief's copy is kept."""
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model trains

    folder = _worker_dir(spec, role, loop)
    manager = loop.extra.get("manager")
    if manager is None:
        manager = tf.train.CheckpointManager(loop.checkpoint, folder, max_to_keep=2)
        loop.extra["manager"] = manager
    manager.save(checkpoint_number=int(loop.epoch.numpy()))
    if role.is_chief:
        _write_json(os.path.join(spec.checkpoint_dir, "history.json"), history)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        loop.extra.pop("manager")
        loop.extra.pop("scratch")


def _read_history(spec: TrainSpec) -> list[dict[str, Any]]:
    history = _read_json(os.path.join(spec.checkpoint_dir, "history.json"), default=[])
    return list(history) if isinstance(history, list) else []


def _read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {} if default is None else default


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
    os.replace(tmp, path)


# --- the whole run ---


def train(spec: TrainSpec, strategy: Any, *, role: Role | None = None, data: TrainData | None = None,
          dataset_fn: Callable[..., Any] | None = None, strategy_name: str | None = None,
          started_at: float | None = None) -> dict[str, Any] | None:
    """prepare -> fit -> finish; the manifest on the chief, None on the other workers."""
    started = started_at or time.time()
    role = role or Role()
    data = data or prepare(spec)
    fitted = fit(spec, data, strategy, role=role, dataset_fn=dataset_fn)
    if not role.is_chief:
        return None
    return finish(spec, data, fitted, role=role, strategy_name=strategy_name or spec.train.strategy,
                  started_at=started)


def finish(spec: TrainSpec, data: TrainData, fitted: Fitted, *, role: Role, strategy_name: str,
           started_at: float) -> dict[str, Any]:
    """Export the SavedModel, write its manifest beside it, drop the finished run's checkpoints."""
    t = spec.train
    shape = input_shape(t, data.train.dim)
    export_saved_model(fitted.build, [np.asarray(w) for w in fitted.model.get_weights()], task=t.task,
                       shape=shape, path=t.output)
    manifest = train_manifest(spec, data, fitted, role=role, strategy_name=strategy_name, started_at=started_at)
    _write_json(os.path.join(t.output, MANIFEST_NAME), manifest)
    shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)
    return manifest


def train_manifest(spec: TrainSpec, data: TrainData, fitted: Fitted, *, role: Role, strategy_name: str,
                   started_at: float) -> dict[str, Any]:
    """`_train_manifest.json`: what was trained on what, how, and how well."""
    import keras  # noqa: PLC0415 - imported by the run already
    import pyarrow  # noqa: PLC0415 - imported by the reader already
    import tensorflow as tf  # noqa: PLC0415 - imported by the run already

    from batchscore import __version__  # noqa: PLC0415 - the package is imported already

    t = spec.train
    finished = time.time()
    last = fitted.history[-1] if fitted.history else {}
    return {
        "status": "succeeded",
        "task": t.task,
        "model": {"kind": t.model, "path": t.output, "signature": "serving_default",
                  "inputs": {"features": [None, *input_shape(t, data.train.dim)]},
                  "outputs": _signature_outputs(t.task, data.classes),
                  "parameters": int(fitted.model.count_params())},
        "data": {"path": t.data, "fingerprint": data.fingerprint, "row_groups": len(data.train.units),
                 "rows": data.train.rows, "features": list(data.train.features), "label": t.label,
                 "validation": t.validation, "classes": data.classes if t.task == "multiclass" else None},
        "strategy": strategy_name, "workers": role.count, "replicas": fitted.replicas, "reader": t.reader,
        "epochs": t.epochs, "epochs_run": t.epochs - fitted.resumed_from_epoch,
        "resumed_from_epoch": fitted.resumed_from_epoch, "batch_size": t.batch_size,
        "learning_rate": t.learning_rate, "seed": t.seed,
        "history": fitted.history,
        "final": {k: v for k, v in last.items() if k.startswith(("loss", "val_"))},
        "started_at": _iso(started_at), "finished_at": _iso(finished),
        "seconds_total": round(finished - started_at, 3), "seconds_training": round(fitted.seconds, 3),
        "rows_per_second": round(fitted.rows / fitted.seconds, 1) if fitted.seconds > 0 and fitted.rows else None,
        "versions": {"batchscore": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "pyarrow": pyarrow.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
    }


def _signature_outputs(task: str, classes: int) -> dict[str, list[Any]]:
    if task == "multiclass":
        return {"probabilities": [None, classes]}
    return {"probability" if task == "binary" else "prediction": [None]}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
