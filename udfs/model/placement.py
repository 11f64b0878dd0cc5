"""Model-parallel inference (`model.placement: split`): a model cut into consecutive stages,
one per device of the task, run as a pipeline over micro-batches.

The task's devices are the GPUs Spark assigned it, else every GPU the worker has (with
`BATCHSCORE_FAKE_GPUS=N`, logical CPU devices standing in, docs/gpu-on-a-laptop.md), else
the CPU; with one device `split` is `replicate`. A `.keras` model's layers are cut into
groups of about equal estimated compute (`node_cost`, `keras_cuts`), each cloned on its
device; a SavedModel splits when it exposes stages (`saved_model_stages`), each loaded on
its own device (`_load_stages`). One `tf.function` runs the stages over micro-batches
(`pipelined`), so no device ever holds the whole model and stages overlap.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchscore.core.errors import ModelError
from batchscore.udfs.model import cache as model_cache
from batchscore.udfs.model import devices as worker_devices
from batchscore.udfs.model.distribution import ModelSource
from batchscore.udfs.model.saved_model_proto import parse_saved_model
from batchscore.udfs.model.signature import ModelSignature, TensorSpec

log = logging.getLogger(__name__)

MICRO_BATCHES_PER_STAGE = 4  # m = 4k keeps the pipeline bubble under ~20% of a call
MIN_MICRO_BATCH_ROWS = 16  # below this a micro-batch costs more in overhead than it overlaps
STAGE_PREFIX = "stage_"

_logged_single = False


@dataclass
class Stage:
    """One stage of a split model: where it runs and what it holds."""

    device: str
    names: list[str]  # the layers (Keras) or the stage object (SavedModel) it runs
    params: int
    cost: float  # estimated multiply-adds per row
    variables: list[Any] = field(default_factory=list)


@dataclass
class SplitModel:
    """A model split over devices: its stages and the pipelined serving function (the cached object)."""

    path: str
    stages: list[Stage]
    micro_batches: int
    serve: Any  # tf.function(feed dict) -> dict of outputs
    keep: list[Any] = field(default_factory=list)  # objects the stages need alive


# --- devices ---


def task_devices() -> list[str]:
    """The devices a split model is placed on when the task was assigned none: every GPU the
    worker has (`devices.worker_gpus`, the stand-ins with fake GPUs), else the CPU."""
    return worker_devices.worker_gpus() or ["/device:CPU:0"]


# --- balancing ---


def balanced_cuts(costs: Sequence[float], k: int) -> list[int]:
    """Cut `costs` into `k` consecutive non-empty groups minimising the largest group's sum.

    Returns:
        the k+1 boundaries `[0, c1, ..., len(costs)]` (group s is `costs[b[s]:b[s+1]]`).
    """
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} items into {k} non-empty groups")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    inf = float("inf")
    # best[s][i]: the smallest max-group sum of costs[:i] in s groups; cut[s][i]: its last cut
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for i in range(s, n - (k - s) + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], prefix[i] - prefix[j])
                if v < best[s][i]:
                    best[s][i], cut[s][i] = v, j
    bounds = [n]
    for s in range(k, 0, -1):
        bounds.append(cut[s][bounds[-1]])
    return bounds[::-1]


def micro_batch_count(batch_size: int, stages: int) -> int:
    """Micro-batches per model call: `MICRO_BATCHES_PER_STAGE` per stage, none under `MIN_MICRO_BATCH_ROWS` rows."""
    return max(1, min(MICRO_BATCHES_PER_STAGE * stages, batch_size // MIN_MICRO_BATCH_ROWS))


def node_cost(node: Any) -> float:
    """Estimated multiply-adds per row of one layer call (a Keras graph node).

    A weight of rank >= 2 (a kernel) is applied once per output position: its size times
    the call's output elements over its last dimension (Dense: in x out; Conv2D:
    kh x kw x cin x cout x output pixels). Every output element counts one more (biases,
    activations, pooling).
    """
    outs = node.output_tensors
    out_elements = sum(_elements(t.shape[1:]) for t in outs)
    cost = float(out_elements)
    for w in node.operation.weights:
        shape = [d or 1 for d in w.shape]
        if len(shape) >= 2 and outs:
            cost += _elements(shape) * max(1.0, out_elements / max(1, shape[-1]))
    return cost


def model_nodes(model: Any) -> list[Any]:
    """A Keras model's layer calls (graph nodes) in topological order, its Input layers left out.

    Keras keeps no public view of a model's own graph: `layer.input`/`layer.output` give a
    layer's *first* call, and a loaded Sequential calls its layers once per rebuild. The
    nodes come from the model's graph (Keras 3 `Functional._nodes_by_depth`; a Sequential's
    graph is its `_functional`).

    Raises:
        ModelError: the model has no graph (a subclassed model, or one never built).
    """
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not by_depth:
        raise ModelError(f"model.placement split needs a functional or Sequential Keras model with known input "
                         f"shapes; '{model.name}' has no layer graph")
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d]
            if not n.is_input and n.operation is not None]


def _elements(shape: Sequence[int | None]) -> int:
    return math.prod(d or 1 for d in shape)


def _flat(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return [x]


# --- the pipeline ---


StageCall = Callable[[dict[str, Any]], dict[str, Any]]


def pipelined(calls: Sequence[StageCall], devices: Sequence[str], micro_batches: int) -> StageCall:
    """A graph function of the chained stages over `micro_batches` micro-batches (call it inside a tf.function).

    Each call is cut into m micro-batches and the stages chained on each under `tf.device`.
    TF's dataflow executor runs an op as soon as its inputs are ready, so stage s of
    micro-batch j+1 runs beside stage s+1 of micro-batch j (GPipe-style; the bubble is
    (k-1)/(m+k-1) of a call). One graph, not a thread per device: no Python between stages,
    copies inserted by TF, one concrete function (no retrace on the last short batch).
    """
    tf: Any = model_cache.import_tensorflow()

    def run(feed: dict[str, Any]) -> dict[str, Any]:
        first = next(iter(feed.values()))
        n = tf.shape(first)[0]
        size = (n + micro_batches - 1) // micro_batches
        # sizes: [m], the last ones short or empty when n is not a multiple of m
        sizes = tf.clip_by_value(n - size * tf.range(micro_batches), 0, size)
        parts = {k: tf.split(v, sizes, num=micro_batches) for k, v in feed.items()}
        outs = []
        for j in range(micro_batches):
            h = {k: parts[k][j] for k in feed}
            for call, device in zip(calls, devices, strict=True):
                with tf.device(device):
                    h = call(h)
            outs.append(h)
        return {k: tf.concat([o[k] for o in outs], axis=0) for k in outs[0]}

    return run


# --- Keras ---


@dataclass
class _KerasCut:
    """One stage of a Keras graph: the layer calls, the live tensors it reads, and what it hands on."""

    nodes: list[Any]
    needed: list[Any]  # tensors from earlier stages (or model inputs) its calls read
    produced: list[Any]  # tensors it makes that later stages or the outputs read
    passed: list[Any]  # tensors from earlier stages it hands on untouched


def keras_cuts(model: Any, k: int) -> list[_KerasCut]:
    """Cut a Keras model's layer calls into `k` stages balanced by `node_cost` (fewer if it has fewer layers).

    Raises:
        ModelError: the model has no layer graph.
    """
    nodes = model_nodes(model)
    if not nodes:
        return []
    bounds = balanced_cuts([node_cost(n) for n in nodes], min(k, len(nodes)))
    made = {id(t): -1 for t in model.inputs}  # tensor -> the call that makes it
    last_use = {id(t): len(nodes) for t in model.outputs}  # tensor -> the last call that reads it
    tensors = {id(t): t for t in model.inputs}
    for i, n in enumerate(nodes):
        for t in n.input_tensors:
            last_use[id(t)] = max(last_use.get(id(t), i), i)
            tensors[id(t)] = t
        for t in n.output_tensors:
            made[id(t)] = i
            tensors[id(t)] = t
    cuts = []
    for a, b in itertools.pairwise(bounds):
        needed = list({id(t): t for n in nodes[a:b] for t in n.input_tensors if made.get(id(t), -1) < a}.values())
        produced = [t for i, t in tensors.items() if a <= made.get(i, -1) < b and last_use.get(i, -1) >= b]
        passed = [t for i, t in tensors.items() if made.get(i, -1) < a and last_use.get(i, -1) >= b]
        cuts.append(_KerasCut(nodes[a:b], needed, produced, passed))
    return cuts


def _keras_stage(cut: _KerasCut, device: str) -> tuple[StageCall, Stage]:
    """The cut as a Keras sub-model whose variables live on `device`, and the call that runs it."""
    tf: Any = model_cache.import_tensorflow()
    import keras  # noqa: PLC0415 - seconds of import: only where a model is split

    sub = keras.Model(inputs=_one_or_all(cut.needed), outputs=_one_or_all(cut.produced))
    with tf.device(device):
        placed = keras.models.clone_model(sub)
    placed.set_weights(sub.get_weights())
    needed, produced, passed = ([str(id(t)) for t in ts] for ts in (cut.needed, cut.produced, cut.passed))

    def call(h: dict[str, Any]) -> dict[str, Any]:
        xs = [h[i] for i in needed]
        out = _flat(placed(xs if len(xs) > 1 else xs[0], training=False))
        return {**{i: h[i] for i in passed}, **dict(zip(produced, out, strict=True))}

    layers = list({id(n.operation): n.operation for n in cut.nodes}.values())
    stage = Stage(device, [n.operation.name for n in cut.nodes], sum(layer.count_params() for layer in layers),
                  sum(node_cost(n) for n in cut.nodes), list(placed.weights))
    return call, stage


def _one_or_all(tensors: list[Any]) -> Any:
    """One tensor as itself (Keras then takes and returns a tensor, not a list of one)."""
    return tensors[0] if len(tensors) == 1 else tensors


def load_split_keras(path: str, devices: Sequence[str], *, batch_size: int,
                     name: str | None = None) -> tuple[SplitModel, model_cache.PredictFn]:
    """A `.keras` file split over `devices`, with the same predict interface as `model_cache.load_keras_model`.

    Args:
        name: the model's path as the user gave it, for messages (default: `path`).

    Raises:
        ModelError: the file cannot be loaded, or has nothing to split (one layer).
    """
    tf: Any = model_cache.import_tensorflow()

    with tf.device("/CPU:0"):  # the whole model only ever sits on the host
        model = model_cache.load_keras_file(path)
    try:
        cuts = keras_cuts(model, len(devices))
    except ValueError:
        cuts = []
    if len(cuts) < 2:
        raise _nothing_to_split(name or path, keras=True)
    built = [_keras_stage(cut, d) for cut, d in zip(cuts, devices, strict=False)]
    calls, stages = [c for c, _ in built], [s for _, s in built]
    names = [t.name.split(":")[0] for t in model.inputs]
    outputs = [str(id(t)) for t in model.outputs]
    inputs = [str(id(t)) for t in model.inputs]
    specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=n) for n, t in zip(names, model.inputs, strict=True)]
    m = micro_batch_count(batch_size, len(stages))
    run = pipelined(calls, [s.device for s in stages], m)

    @tf.function(input_signature=specs)
    def serve(*xs):
        out = run(dict(zip(inputs, xs, strict=True)))
        return {f"output_{i}": out[o] for i, o in enumerate(outputs)}

    def predict(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = serve(*[tf.constant(feed[n]) for n in names])
        return {k: v.numpy() for k, v in out.items()}

    del model  # the host copy: each stage holds its own variables on its device
    return SplitModel(name or path, stages, m, serve), predict


# --- SavedModel with stages ---


def saved_model_stages(path: str) -> list[str]:
    """The stage children of a SavedModel's root (`stage_0`, `stage_1`, ...), in order, read from
    its object graph with the protobuf package alone (no TensorFlow, no variables).

    The convention: children `stage_0..stage_{k-1}` of the root, each a callable module whose
    `__call__` is a `tf.function` with one input signature (a dict of tensors to a dict of
    tensors) and owns its variables; `stage_0` takes the signature's inputs, each stage's
    output keys are the next one's input keys, the last returns the signature's outputs, and
    serving_default computes the same chain (`tests/support/placement.build_staged_model`).
    """
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        meta_graphs = parse_saved_model(fh.read()).meta_graphs
    nodes = meta_graphs[0].object_graph_def.nodes if meta_graphs else []
    children = {c.local_name for c in nodes[0].children} if nodes else set()
    out: list[str] = []
    while f"{STAGE_PREFIX}{len(out)}" in children:
        out.append(f"{STAGE_PREFIX}{len(out)}")
    return out


def _nothing_to_split(label: str, *, keras: bool) -> ModelError:
    if keras:
        return ModelError(f"model.placement split: model '{label}' has nothing to split: it needs at least two "
                          "layers")
    return ModelError(f"model.placement split: SavedModel '{label}' has nothing to split: it needs stage "
                      f"children {STAGE_PREFIX}0, {STAGE_PREFIX}1, ... of its root, each a tf.function "
                      "from a dict of tensors to a dict of tensors (udfs/model/placement.py)")


def check_splittable(path: str) -> None:
    """On the driver, before any task: the model at `path` has something to split.

    Raises:
        ModelError: one line naming the model and what `split` needs.
    """
    if path.endswith(".keras"):
        if len(model_nodes(model_cache.load_keras_file(path))) < 2:
            raise _nothing_to_split(path, keras=True)
    elif len(saved_model_stages(path)) < 2:
        raise _nothing_to_split(path, keras=False)


def load_split_saved_model(path: str, inputs: Sequence[TensorSpec], devices: Sequence[str], *, batch_size: int,
                           name: str | None = None) -> tuple[SplitModel, model_cache.PredictFn]:
    """A SavedModel that exposes stages (module docstring), stage i loaded on its device.

    Args:
        inputs: the served signature's inputs (the pipeline's input signature).

    Raises:
        ModelError: the model exposes fewer than two stages, or they do not chain.
    """
    tf: Any = model_cache.import_tensorflow()

    names = saved_model_stages(path)
    label = name or path
    if len(names) < 2:
        raise _nothing_to_split(label, keras=False)
    stages, calls = [], []
    for group, device in zip(_group_stages(names, len(devices)), devices, strict=False):
        objs = _load_stages(path, group, device)
        calls.append(_chain(objs))
        variables = [v for o in objs for v in tf.train.TrackableView(o).descendants() if isinstance(v, tf.Variable)]
        params = sum(int(np.prod(v.shape)) for v in variables)
        stages.append(Stage(device, list(group), params, float(params), variables))
    spec = {s.name: tf.TensorSpec([None, *s.shape], tf.as_dtype(s.dtype), name=s.name) for s in inputs}
    m = micro_batch_count(batch_size, len(stages))
    serve = tf.function(pipelined(calls, [s.device for s in stages], m), input_signature=[spec])

    def predict(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = serve({k: tf.constant(v) for k, v in feed.items()})
        except (KeyError, TypeError, ValueError) as e:  # raised while tracing: the stages' keys do not chain
            raise ModelError(f"model.placement split: the stages of '{label}' do not chain from the signature's "
                             f"inputs to its outputs: {str(e).splitlines()[0]}") from None
        return {k: v.numpy() for k, v in out.items()}

    return SplitModel(label, stages, m, serve, keep=calls), predict


def _load_stages(path: str, names: list[str], device: str) -> list[Any]:
    """The stage objects `names` of a SavedModel, their variables on `device` holding their values.

    The model is loaded without its checkpoint (variables created, no memory for their values),
    then only these stages' values are read into it; the rest of the model is dropped with the
    root. (`load_partial` cannot do it: it restores every function of the model, and the
    serving signature captures every stage's variables.)
    """
    tf: Any = model_cache.import_tensorflow()

    with tf.device(device):
        root = tf.saved_model.load(path, options=tf.saved_model.LoadOptions(experimental_skip_checkpoint=True))
        objs = [getattr(root, n) for n in names]
        tf.train.Checkpoint(**dict(zip(names, objs, strict=True))).read(
            os.path.join(path, "variables", "variables")).expect_partial()
    return objs


def _group_stages(names: list[str], k: int) -> list[list[str]]:
    """More stages than devices: consecutive stages share a device (equal counts)."""
    bounds = balanced_cuts([1.0] * len(names), min(k, len(names)))
    return [names[a:b] for a, b in itertools.pairwise(bounds)]


def _chain(objs: list[Any]) -> StageCall:
    def call(h: dict[str, Any]) -> dict[str, Any]:
        for o in objs:
            h = dict(o(h))
        return h

    return call


# --- in a task ---


class PipelinePredict:
    """The predict function of a split model (what the model cache hands out)."""

    def __init__(self, split: SplitModel, fn: model_cache.PredictFn) -> None:
        self.split, self._fn = split, fn

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._fn(feed)


def pipeline_stages(predict: object) -> int:
    """How many devices a task's predict function runs on (1: the model is not split)."""
    return len(predict.split.stages) if isinstance(predict, PipelinePredict) else 1


def split_loader(source: ModelSource, signature: ModelSignature, *, batch_size: int,
                 replicate: Callable[[], tuple[object, model_cache.PredictFn]],
                 devices: Sequence[str] | None = None) -> Callable[[], tuple[object, model_cache.PredictFn]]:
    """What loads the model split over the task's devices (`replicate` when there is one device).

    Args:
        devices: the TF devices the task was assigned (udfs/model/devices.py); None: every device
            the worker has (`task_devices`).
    """
    def load() -> tuple[object, model_cache.PredictFn]:
        global _logged_single
        devices_ = list(devices) if devices else task_devices()
        if len(devices_) < 2:
            if not _logged_single:
                log.info("model.placement split: this worker has one device (%s), so the model is replicated; "
                         "assign several GPUs (or fake them, %s) to split it", devices_[0] if devices_ else "none",
                         worker_devices.FAKE_GPUS_ENV)
                _logged_single = True
            return replicate()
        path = source.local_path()
        if path.endswith(".keras"):
            split, fn = load_split_keras(path, devices_, batch_size=batch_size, name=source.path)
        else:
            split, fn = load_split_saved_model(path, signature.inputs, devices_, batch_size=batch_size,
                                               name=source.path)
        log.info("model.placement split: '%s' in %d stages, %d micro-batches per call: %s", split.path,
                 len(split.stages), split.micro_batches,
                 "; ".join(f"{s.device} {s.names[0]}..{s.names[-1]} ({s.params} params)" for s in split.stages))
        return split, PipelinePredict(split, fn)

    return load
