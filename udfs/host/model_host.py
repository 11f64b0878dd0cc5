"""The model host: one process per executor (per assigned GPU) that holds the model for
every Python worker of that executor (`model.sharing: executor`).

It loads the model with the workers' own loader, so its predictions are those of
`sharing: worker`, and listens on a Unix socket (`protocol` is the wire format): one
scorer thread joins requests that arrive together into model calls of at most
`model.batch_size` rows (`RequestBatcher`). It is started detached by `client`, and
exits within a second once the process that forked the starting worker is gone
(PySpark's daemon, or the executor JVM), removing its files (`wait_for_exit`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchscore.udfs.host import protocol as host_protocol

log = logging.getLogger("batchscore.model_host")

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


# --- joining concurrent requests into model calls ---


@dataclass
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    shape_key: tuple[Any, ...]  # requests join only when their inputs' names, dtypes and inner shapes agree
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None


class RequestBatcher:
    """Joins concurrent predict requests into model calls of at most `batch_size` rows.

    `submit` (one thread per connection) queues a request and blocks until its rows are
    scored; `run` (the scorer thread) takes the first queued request, then joins queued
    requests of the same input shapes while they fit in `batch_size` rows, waiting at
    most `wait_s` after the first for more, calls the model once and splits the outputs.
    A joined call the model rejects is retried request by request, so one request's bad
    rows fail only that request.
    """

    def __init__(self, predict: Predict, *, batch_size: int, wait_s: float) -> None:
        self._predict = predict
        self.batch_size = batch_size
        self.wait_s = wait_s
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self.calls: list[int] = []  # rows of each model call (tests and the host's log)

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `inputs`.

        Raises:
            RuntimeError: the model raised on these rows (its one-line message).
        """
        rows = len(next(iter(inputs.values()))) if inputs else 0
        key = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        req = _Request(inputs, rows, key)
        with self._cond:
            self._queue.append(req)
            self._cond.notify_all()
        req.done.wait()
        if req.error is not None:
            raise RuntimeError(req.error)
        assert req.outputs is not None
        return req.outputs

    def run(self) -> None:
        """The scorer loop (never returns)."""
        while True:
            self.score(self.next_group())

    def next_group(self) -> list[_Request]:
        """The next requests to score together (blocks until there is one)."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            first = self._queue.popleft()
            group, rows = [first], first.rows
            deadline = time.monotonic() + self.wait_s
            while rows < self.batch_size:
                fit = next((r for r in self._queue
                            if r.shape_key == first.shape_key and rows + r.rows <= self.batch_size), None)
                if fit is not None:
                    self._queue.remove(fit)
                    group.append(fit)
                    rows += fit.rows
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return group

    def score(self, group: list[_Request]) -> None:
        """Score `group` in one model call (chunked above batch_size) and hand each request its rows."""
        if len(group) == 1:
            req = group[0]
            try:
                req.outputs = self._call(req.inputs, req.rows)
            except Exception as e:  # noqa: BLE001 - the model's error goes back to the request's worker
                req.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            req.done.set()
            return
        joined = {k: np.concatenate([r.inputs[k] for r in group]) for k in group[0].inputs}
        try:
            out = self._call(joined, sum(r.rows for r in group))
        except Exception:  # noqa: BLE001 - retried request by request: each gets its own verdict
            for req in group:
                self.score([req])
            return
        start = 0
        for req in group:
            req.outputs = {k: v[start:start + req.rows] for k, v in out.items()}
            start += req.rows
            req.done.set()

    def _call(self, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        if rows <= self.batch_size:
            self.calls.append(rows)
            return dict(self._predict(inputs))
        parts = [self._call({k: v[i:i + self.batch_size] for k, v in inputs.items()}, min(self.batch_size, rows - i))
                 for i in range(0, rows, self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- serving connections ---


@dataclass
class HostState:
    """What a reply tells the worker about this host."""

    host_id: str
    loads: int
    devices: str

    def reply_fields(self) -> dict[str, str]:
        return {"host_id": self.host_id, "loads": str(self.loads), "pid": str(os.getpid()), "devices": self.devices}


def serve_connection(conn: socket.socket, batcher: RequestBatcher, state: HostState) -> None:
    """Answer one worker's requests until it closes the connection."""
    with conn:
        while True:
            try:
                arrays, fields = host_protocol.recv(conn)
            except (EOFError, OSError):
                return
            reply: dict[str, np.ndarray] = {}
            meta = state.reply_fields()
            if fields.get("op") == "predict":
                try:
                    reply = batcher.submit(arrays)
                except RuntimeError as e:
                    meta["error"] = str(e)
            elif fields.get("op") != "hello":
                meta["error"] = f"unknown op {fields.get('op')!r}"
            try:
                host_protocol.send(conn, reply, meta)
            except OSError:
                return


def serve(listener: socket.socket, batcher: RequestBatcher, state: HostState) -> None:
    """Accept workers forever, one thread each; the scorer runs in its own thread."""
    threading.Thread(target=batcher.run, name="scorer", daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, batcher, state), daemon=True).start()


# --- lifecycle ---


def wait_for_exit(pid: int, *, poll_s: float = 0.5) -> None:
    """Return once process `pid` has ended (at once if it is not there)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel): poll
        while _alive(pid):
            time.sleep(poll_s)
        return
    try:
        while True:
            with contextlib.suppress(InterruptedError):
                if select.select([fd], [], [])[0]:
                    return
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_files(*paths: str | None) -> None:
    for p in paths:
        if p:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore.udfs.host.model_host", description=__doc__.split("\n", 1)[0])
    p.add_argument("--socket", required=True, help="the Unix socket to listen on")
    p.add_argument("--model", required=True, help="the model's local path (SavedModel dir or .keras file)")
    p.add_argument("--fingerprint", required=True)
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--cores", type=int, default=0, help="TF thread pool size (0: TF's default)")
    p.add_argument("--gpus", default="", help="comma-separated GPU addresses Spark assigned")
    p.add_argument("--gpu-memory-mb", type=int, default=None, help="model.gpu_memory_mb: a per-process GPU memory cap")
    p.add_argument("--watch", type=int, required=True, help="exit when this process ends")
    p.add_argument("--host-id", required=True, help="pid-free id: executor/incarnation")
    p.add_argument("--files", required=True, help="JSON: pid, lock, log, count paths")
    return p.parse_args(argv)


def _load(args: argparse.Namespace) -> tuple[Predict, int, str]:
    """(predict, loads, device label) with the workers' loader, threads and device set up first."""
    from batchscore.udfs.model import cache as model_cache  # noqa: PLC0415 - TensorFlow's import: after the fork
    from batchscore.udfs.model import devices  # noqa: PLC0415 - TensorFlow's import: after the fork
    from batchscore.udfs.model.distribution import ModelSource  # noqa: PLC0415 - with the engine's imports

    model_cache.configure_threads(args.cores)
    device = devices.pin_task([g for g in args.gpus.split(",") if g], memory_mb=args.gpu_memory_mb)
    source = ModelSource("direct", args.model, args.fingerprint)
    load = devices.placed(model_cache.model_loader(source, args.signature), device)
    predict = model_cache.get_predict_fn(f"{args.fingerprint}/{args.signature}", load, device=device.name)
    return predict, model_cache.load_count(), device.label


def _listen(path: str) -> socket.socket:
    """Listen on `path`, made to appear only once it accepts (bind aside, then rename)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    aside = f"{path}.{os.getpid()}"
    remove_files(aside)
    listener.bind(aside)
    listener.listen(64)
    os.rename(aside, path)
    return listener


def main(argv: list[str] | None = None) -> int:
    """Load the model, say `ready <pid>` (or `error <message>`) on stdout, then serve."""
    args = _parse_args(argv)
    files = json.loads(args.files)
    ready = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the starter's pipe stays open only through `ready`
    os.close(devnull)
    try:
        predict, loads, devices = _load(args)
        listener = _listen(args.socket)
    except Exception as e:  # noqa: BLE001 - the starter turns this line into the task's error
        ready.write(f"error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
        ready.close()
        return 2

    def leave(*_: Any) -> None:
        remove_files(args.socket, files.get("pid"))
        os._exit(0)

    def executor_gone() -> None:
        wait_for_exit(args.watch)
        remove_files(files.get("lock"), files.get("log"), files.get("count"))
        leave()

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    threading.Thread(target=executor_gone, name="watch", daemon=True).start()
    with open(files["pid"], "w") as fh:
        fh.write(f"{os.getpid()}\n")
    state = HostState(args.host_id, loads, devices)
    batcher = RequestBatcher(predict, batch_size=args.batch_size, wait_s=args.wait_ms / 1000)
    ready.write(f"ready {os.getpid()}\n")
    ready.close()
    try:
        serve(listener, batcher, state)
    finally:
        remove_files(args.socket, files.get("pid"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
