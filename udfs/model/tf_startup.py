"""TensorFlow's import with the C++ lines it prints before reading TF_CPP_MIN_LOG_LEVEL held to that level.

Loading libtensorflow_framework (and the profiler plugin, which links its own absl) logs
"oneDNN custom operations are on ..." from a static initialiser, after absl's "All log
messages before absl::InitializeLog() ..." preamble: before TensorFlow applies
`TF_CPP_MIN_LOG_LEVEL`, so at any level. Nothing but `TF_ENABLE_ONEDNN_OPTS=0` (other
numerics) silences them. So while TensorFlow is imported with the level at 1 or more, file
descriptor 2 goes through a small filter process that drops absl-format lines below the
level and that preamble, and passes everything else on as it comes (errors, Python
warnings, a crash's last words). Level 0 or unset (`--verbose`): stderr is left alone.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# The filter, `python -I -S -c FILTER LEVEL`: stdin the import's stderr, stderr the real one.
# Severity letters as absl (`I0000 00:00:1796685227.060427 5394 port.cc:153] ...`) and TensorFlow's
# own sink (`2026-01-30 22:44:42.456316: I tensorflow/core/util/port.cc:153] ...`) print them.
FILTER = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle
level = int(sys.argv[1])
rank = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
preamble = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
prefix = re.compile(rb"(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )"
                    rb"[^ \]]+:\d+\] ")
out = sys.stderr.buffer
for line in sys.stdin.buffer:
    m = prefix.match(line)
    if line.rstrip(b"\r\n") == preamble or (m and rank[m.group(1) or m.group(2)] < level):
        continue
    out.write(line)
    out.flush()
"""
FILTER_WAIT_S = 5.0  # the filter ends once the pipe closes; longer only if a child started meanwhile holds it

_lock = threading.Lock()
_held = False  # fd 2 goes through a filter now (one at a time: a nested or concurrent import passes through)
_lingering: list[subprocess.Popen[bytes]] = []  # filters still fed by a process started while one ran


def min_log_level() -> int:
    """`TF_CPP_MIN_LOG_LEVEL` as TensorFlow reads it (unset or not a number: 0, everything shown)."""
    try:
        return int(os.environ.get(LEVEL_ENV, "0").strip() or 0)
    except ValueError:
        return 0


def _claim() -> bool:
    global _held
    with _lock:
        if _held:
            return False
        _held = True
        return True


def _release() -> None:
    global _held
    with _lock:
        _held = False


def _start_filter(level: int) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", FILTER, str(level)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
    except OSError:
        return None


def _redirect_stderr(proc: subprocess.Popen[bytes]) -> int:
    """Point fd 2 at the filter's stdin; the saved fd 2 (-1: left as it was, e.g. no fd 2)."""
    assert proc.stdin is not None
    try:
        saved = os.dup(2)
    except OSError:
        saved = -1
    if saved >= 0:
        sys.stderr.flush()
        os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 is now the pipe's only writer here: restoring it ends the filter
    return saved


@contextlib.contextmanager
def held_to_log_level() -> Iterator[None]:
    """Inside: this process's stderr (fd 2) loses the C++ log lines below `TF_CPP_MIN_LOG_LEVEL`
    and absl's preamble; everything else passes, in order. A no-op at level 0 or when already held."""
    level = min_log_level()
    if level < 1 or not _claim():
        yield
        return
    proc = _start_filter(level)
    saved = _redirect_stderr(proc) if proc is not None else -1
    try:
        yield
    finally:
        if saved >= 0:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if proc is not None:
            try:
                proc.wait(timeout=FILTER_WAIT_S)
            except subprocess.TimeoutExpired:
                _lingering.append(proc)  # it ends with the process that holds its pipe; its lines still pass
        _release()


class _HeldLoader(importlib.abc.Loader):
    """TensorFlow's own loader, executing the package with its start-up lines held."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with held_to_log_level():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # is_package, get_filename, get_resource_reader, ...
        return getattr(self._loader, name)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` through the other finders and wraps its loader in `_HeldLoader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HeldLoader(spec.loader)
                return spec
        return None


def hold_startup_logs_on_import() -> None:
    """From now on, wherever this process imports TensorFlow (directly, or through Keras),
    its start-up lines are held to the level in force then (`held_to_log_level`). Idempotent."""
    if not any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())
