"""Multi-worker training on Spark: `train.workers` barrier tasks, one TensorFlow worker each.

The shape of Spark's `TorchDistributor` (spark-tensorflow-distributor, its TensorFlow
forerunner, is unmaintained): `rdd.barrier().mapPartitions` starts all N tasks at once;
each reserves a port, agrees `TF_CONFIG` with the others and runs its worker in a fresh
Python process (`_barrier_task`).

Worker 0 is the chief: it exports the SavedModel and the manifest. A worker that fails
fails its task; Spark then fails the barrier stage and kills the other tasks (and their
trainers). The driver reports the failed worker's one-line reason (`TrainWorkerError`).
Checkpoints stay in `train.checkpoint_dir`, so a rerun resumes after the last epoch saved.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

from batchscore.config.train_spec import TrainSpec
from batchscore.core.errors import BatchscoreError, ConfigError
from batchscore.core.session_kind import is_connect

MODULE = "batchscore.training.multiworker"
PARENT_ENV = "BATCHSCORE_TRAIN_PARENT"  # the barrier task's pid: the trainer exits if it is gone
PR_SET_PDEATHSIG = 1


class TrainWorkerError(RuntimeError):
    """A training worker failed; the message is one line naming the worker and why."""


def run_multi_worker(spark: Any, spec: TrainSpec, *, row_filter: Any = None) -> dict[str, Any]:
    """Train on `train.workers` Spark barrier tasks; the chief's training manifest.

    Raises:
        ConfigError: the cluster has fewer task slots than `train.workers`; a Spark Connect session
            (no barrier tasks).
        TrainWorkerError: (in the Spark error) a worker failed.
    """
    if is_connect(spark):
        raise ConfigError("train.strategy multi_worker needs a classic Spark session (barrier tasks); under Spark "
                          "Connect use train.strategy default or mirrored, which train in this process")
    n = spec.train.workers
    slots = task_slots(spark)
    if slots is not None and n > slots:  # else Spark retries the barrier stage for 40 x 15 s before it gives up
        raise ConfigError(f"config key 'train.workers' {n} is more than the cluster's {slots} task slots "
                          "(barrier tasks all run at once)")
    spec = absolute_paths(spec)  # the tasks' working directory need not be the driver's
    payload = pickle.dumps({"spec": spec.model_dump(mode="json"), "row_filter": row_filter,
                            "started_at": time.time()})
    rdd = spark.sparkContext.parallelize(range(n), n)
    try:
        results = rdd.barrier().mapPartitions(functools.partial(_barrier_task, payload)).collect()
    except Exception as e:
        text = str(e)
        if "barrier" in text.lower() and "slots" in text:
            raise ConfigError(f"config key 'train.workers' {n} is more than the cluster's task slots "
                              f"(barrier tasks all run at once)") from None
        raise
    chief = next(r for r in results if r["index"] == 0)
    manifest: dict[str, Any] = chief["manifest"]
    return manifest


def task_slots(spark: Any) -> int | None:
    """How many tasks the cluster runs at once now (Spark's own barrier check), None when unknown."""
    try:
        sc = spark.sparkContext._jsc.sc()
        return int(sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - an internal JVM method: without it Spark's own check still runs
        return None


def absolute_paths(spec: TrainSpec) -> TrainSpec:
    """`spec` with its local paths (data, validation, output, checkpoints) made absolute; URIs stay."""
    t = spec.train

    def absolute(path: str) -> str:
        return path if "://" in path else os.path.abspath(path)

    update: dict[str, Any] = {"data": absolute(t.data), "output": absolute(t.output),
                              "checkpoint_dir": absolute(spec.checkpoint_dir)}
    if isinstance(t.validation, str):
        update["validation"] = absolute(t.validation)
    return spec.model_copy(update={"train": t.model_copy(update=update)})


def worker_failure(e: BaseException) -> str | None:
    """The one-line `TrainWorkerError` inside a Spark job failure, if there is one."""
    marker = f"{TrainWorkerError.__name__}: "
    for line in str(e).splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return None


# --- in the barrier task (a Spark Python worker) ---


def _barrier_task(payload: bytes, _rows: Iterator[int]) -> Iterator[dict[str, Any]]:
    """One barrier task: run training worker `partitionId()`; the chief's manifest.

    1. reserves a port: a socket bound to port 0 with SO_REUSEPORT, kept open (bound, not
       listening) until training ends, so no other process takes the port in between;
       TensorFlow's gRPC server binds the same port with SO_REUSEPORT, which it sets only
       when `TF_GRPC_REUSE_PORT=1` (TF's own default is off);
    2. agrees the cluster with the others: `allGather` of the ports, the hosts from
       `getTaskInfos()`, so `TF_CONFIG` is `{"cluster": {"worker": [host:port, ...]},
       "task": {"type": "worker", "index": partition}}` on every task;
    3. runs the worker in a fresh Python process (`python -m batchscore.training.multiworker`):
       `TF_CONFIG` is read when `MultiWorkerMirroredStrategy` is created and a process's
       TensorFlow joins one cluster only, while Spark reuses its Python workers; the child
       dies with its task (PR_SET_DEATHSIG), so a killed task leaves no trainer behind.
    """
    from pyspark import BarrierTaskContext  # noqa: PLC0415 - runs in the barrier task only

    ctx = BarrierTaskContext.get()
    index = ctx.partitionId()
    with reserved_port() as port:
        ports = [int(p) for p in ctx.allGather(str(port))]
        hosts = [info.address.rsplit(":", 1)[0] for info in ctx.getTaskInfos()]
        tf_config = {"cluster": {"worker": [f"{h}:{p}" for h, p in zip(hosts, ports, strict=True)]},
                     "task": {"type": "worker", "index": index}}
        _run_trainer(payload, tf_config, index=index, cores=ctx.cpus())
    result: dict[str, Any] = {"index": index}
    if index == 0:
        from batchscore.training.loop import MANIFEST_NAME  # noqa: PLC0415 - TF-free; only the chief reads it

        spec = TrainSpec.model_validate(pickle.loads(payload)["spec"])
        with open(os.path.join(spec.train.output, MANIFEST_NAME)) as f:
            result["manifest"] = json.load(f)
    yield result


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A free TCP port, held by a bound (not listening) SO_REUSEPORT socket while the block runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _run_trainer(payload: bytes, tf_config: dict[str, Any], *, index: int, cores: int) -> None:
    """Run worker `index` in a fresh Python process; raise TrainWorkerError if it fails."""
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_GRPC_REUSE_PORT": "1",
           PARENT_ENV: str(os.getpid()), "BATCHSCORE_TRAIN_CORES": str(max(cores, 1))}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            proc.communicate(payload)
            rc = proc.returncode
        finally:
            if proc.poll() is None:  # the task is being killed: take the trainer with it
                proc.kill()
        if rc != 0:
            log.seek(0)
            raise TrainWorkerError(f"training worker {index} failed ({_exit_text(rc)}): "
                                   f"{_reason(log.read().decode(errors='replace'))}")


def _exit_text(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"


def _reason(output: str) -> str:
    """The telling line of a trainer's output: its `error: ...` line, else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    line = errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else "no output")
    return line[:500]


# --- the trainer process (python -m batchscore.training.multiworker) ---


def _die_with_parent() -> None:
    """Get SIGKILL when the barrier task's process ends (Linux); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_ENV, str(os.getppid())):
        os._exit(1)


def trainer_main() -> int:
    """One MultiWorkerMirroredStrategy worker: its config from stdin, its place from TF_CONFIG."""
    _die_with_parent()
    payload = pickle.loads(sys.stdin.buffer.read())
    try:
        spec = TrainSpec.model_validate(payload["spec"])
        _train_worker(spec, row_filter=payload["row_filter"], started_at=payload["started_at"])
        return 0
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the process's last word: a traceback, then the one line the driver shows
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {type(e).__name__}: {first}"[:500], file=sys.stderr)
        return 1


def _train_worker(spec: TrainSpec, *, row_filter: Any, started_at: float) -> None:
    from batchscore.training import loop as training  # noqa: PLC0415 - TensorFlow: only in the trainer
    from batchscore.udfs.model import cache as model_cache  # noqa: PLC0415 - TensorFlow: only in the trainer

    tf: Any = model_cache.import_tensorflow()
    cores = int(os.environ.get("BATCHSCORE_TRAIN_CORES", "1"))
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    cluster = json.loads(os.environ["TF_CONFIG"])
    role = training.Role(index=int(cluster["task"]["index"]), count=len(cluster["cluster"]["worker"]))
    data = training.prepare(spec, row_filter=row_filter)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    training.train(spec, strategy, role=role, data=data, strategy_name="multi_worker", started_at=started_at)
    # Everyone waits for the chief's export before leaving: a worker that exits early looks
    # like a failure to the others' collectives and coordination service.
    strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.ones([]))), axis=None)


if __name__ == "__main__":
    sys.exit(trainer_main())
