"""Stream Arrow batches through a model in fixed-size chunks, keeping row order.

Rows are re-chunked to `batch_size` across Arrow batch boundaries; an Arrow
batch is emitted once all its good rows have predictions. Memory holds at most
one model chunk plus the Arrow batches it spans.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.core.columns import BAD_COLUMN, NO_COLUMN, OK_REASON, REASON_COLUMN
from batchscore.core.errors import ModelUnavailable
from batchscore.udfs.batches import convert
from batchscore.udfs.batches.binding import InputFeed, required_columns
from batchscore.udfs.model.signature import ModelSignature

PredictFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

@dataclass
class ScoreStats:
    """What one partition (or process) did; merged into the run's stats (udfs/lanes/stats.py)."""

    rows: int = 0
    rows_bad: int = 0
    model_calls: int = 0
    max_call_rows: int = 0
    max_batch_rows: int = 0  # the largest Arrow batch the stream brought

    def as_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "rows_bad": self.rows_bad,
            "model_calls": self.model_calls,
            "max_call_rows": self.max_call_rows,
            "max_batch_rows": self.max_batch_rows,
        }


# Row-aligned columns: numpy arrays, or convert.Ragged for a padded input until its chunk is
# padded. Typed Any: both kinds slice, take len() and concatenate alike, and one key holds
# one kind for the whole stream; a union would need a cast at every use.
Rows = Any


def _concat(parts: list[Rows]) -> Rows:
    if isinstance(parts[0], convert.Ragged):
        return convert.Ragged.concat(parts)
    return np.concatenate(parts)


class _Fifo:
    """A queue of row-aligned dicts (numpy arrays, or Ragged rows) that can give back exactly n rows."""

    def __init__(self) -> None:
        self._parts: deque[dict[str, Rows]] = deque()
        self.rows = 0

    def push(self, part: dict[str, Rows], rows: int) -> None:
        if rows:
            self._parts.append(part)
            self.rows += rows

    def take(self, n: int) -> dict[str, Rows]:
        taken: list[dict[str, Rows]] = []
        need = n
        while need:
            head = self._parts[0]
            m = len(next(iter(head.values())))
            if m <= need:
                taken.append(self._parts.popleft())
                need -= m
            else:
                taken.append({k: v[:need] for k, v in head.items()})
                self._parts[0] = {k: v[need:] for k, v in head.items()}
                need = 0
        self.rows -= n
        if len(taken) == 1:
            return taken[0]
        return {k: _concat([t[k] for t in taken]) for k in taken[0]}


@dataclass
class _Pending:
    batch: pa.RecordBatch  # the pass-through (keep) columns
    flags: convert.RowFlags
    n_good: int


@dataclass
class StreamScorer:
    """Scores a stream of Arrow batches with one model.

    Output batches hold the keep columns, one column per signature output, and
    the row's reason (`ok` or a quarantine code) and offending column. Padded
    inputs are padded per model call to that call's longest row, rounded up to
    `pad_multiple`.
    """

    signature: ModelSignature
    feeds: tuple[InputFeed, ...]
    predict: PredictFn
    batch_size: int
    keep_columns: list[str]
    output_names: list[str]
    stats: ScoreStats = field(default_factory=ScoreStats)
    pad_multiple: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.pad_multiple < 1:
            raise ValueError("pad_multiple must be >= 1")
        self._columns = required_columns(self.feeds)
        self._column_names = np.array([*self._columns, NO_COLUMN], dtype=object)
        self._filler: dict[str, np.ndarray] | None = None  # one row of outputs, once the model has worked

    def score(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pending: deque[_Pending] = deque()
        fifo_in, fifo_out = _Fifo(), _Fifo()
        for batch in batches:
            if batch.num_rows == 0:
                continue
            inputs, flags = convert.batch_to_inputs(batch, self.feeds, self._columns)
            n_good = int(flags.good.sum())
            keep = batch.select(self.keep_columns) if self.keep_columns else None
            pending.append(_Pending(keep, flags, n_good))
            fifo_in.push(inputs, n_good)
            self.stats.rows += batch.num_rows
            self.stats.max_batch_rows = max(self.stats.max_batch_rows, batch.num_rows)
            while fifo_in.rows >= self.batch_size:
                fifo_out.push(self._call(fifo_in.take(self.batch_size)), self.batch_size)
            while pending and fifo_out.rows >= pending[0].n_good:
                yield self._emit(pending.popleft(), fifo_out)
        if fifo_in.rows:
            n = fifo_in.rows  # the short last chunk: same concrete function, no retrace
            fifo_out.push(self._call(fifo_in.take(n)), n)
        while pending:
            yield self._emit(pending.popleft(), fifo_out)

    def _call(self, chunk: dict[str, Rows]) -> dict[str, np.ndarray]:
        m = len(next(iter(chunk.values())))
        chunk = convert.pad_inputs(chunk, self.feeds, self.pad_multiple)  # [m, length, ...] per padded input
        self.stats.model_calls += 1
        self.stats.max_call_rows = max(self.stats.max_call_rows, m)
        try:
            out = dict(self.predict(chunk))
            if self._filler is None:
                self._filler = {k: np.zeros_like(v[:1]) for k, v in out.items()}
            bad = convert.bad_prediction_rows(out, self.signature, m)
            reason = np.where(bad, convert.BAD_PREDICTION, convert.OK).astype(np.int8)
        except ModelUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - isolate the rows the model rejects
            out, reason = self._call_rows(chunk, m, e)
        out["__reason__"] = reason
        return out

    def _call_rows(
        self, chunk: dict[str, np.ndarray], m: int, error: Exception
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The model raised on a chunk: score row by row, flag the rows it rejects."""
        reason = np.full(m, convert.MODEL_ERROR, dtype=np.int8)
        parts: list[dict[str, np.ndarray] | None] = []
        for i in range(m):
            self.stats.model_calls += 1
            try:
                o = dict(self.predict({k: v[i : i + 1] for k, v in chunk.items()}))
                reason[i] = convert.BAD_PREDICTION if convert.bad_prediction_rows(o, self.signature, 1)[0] else 0
                parts.append(o)
            except ModelUnavailable:
                raise
            except Exception:  # noqa: BLE001 - isolate the rows the model rejects, whatever it raises
                parts.append(None)
        template = next((p for p in parts if p is not None), None) or self._filler
        if template is None:
            # Every row fails and none ever passed: a broken model, not bad rows. (Once the
            # model has worked, a chunk of only rejected rows, e.g. a short last one, is bad rows.)
            raise error
        self._filler = self._filler or {k: np.zeros_like(v[:1]) for k, v in template.items()}
        out = {}
        for k, v in template.items():
            filler = np.zeros_like(v)
            out[k] = np.concatenate([p[k] if p is not None else filler for p in parts])
        return out, reason

    def _emit(self, p: _Pending, fifo_out: _Fifo) -> pa.RecordBatch:
        n = len(p.flags.reason)
        reason = p.flags.reason
        rows = None
        if p.n_good:
            preds = fifo_out.take(p.n_good)
            pred_reason = preds.pop("__reason__")
            good_idx = np.flatnonzero(reason == convert.OK)
            if pred_reason.any():
                reason = reason.copy()
                reason[good_idx] = pred_reason
                p.flags.column[good_idx[pred_reason != 0]] = -1
                keep = pred_reason == 0
                preds = {k: v[keep] for k, v in preds.items()}
                good_idx = good_idx[keep]
            if len(good_idx) != n:
                rows = good_idx
        else:
            preds = {o.name: np.zeros((0,)) for o in self.signature.outputs}
            rows = np.zeros(0, dtype=np.int64)
        pred_arrays = convert.outputs_to_arrow(preds, self.signature, n, rows)
        n_bad = int((reason != convert.OK).sum())
        self.stats.rows_bad += n_bad
        if n_bad:
            reason_col = pa.array(np.asarray(convert.REASONS, dtype=object)[reason], type=pa.string())
            column_col = pa.array(self._column_names[p.flags.column], type=pa.string())
        else:
            reason_col = _repeat_string(OK_REASON, n)
            column_col = _repeat_string(NO_COLUMN, n)
        keep_arrays = list(p.batch.columns) if p.batch is not None else []
        return pa.RecordBatch.from_arrays(
            [*keep_arrays, *pred_arrays, reason_col, column_col],
            names=[*self.keep_columns, *self.output_names, REASON_COLUMN, BAD_COLUMN],
        )


def _repeat_string(s: str, n: int) -> pa.Array:
    """`n` copies of `s` as an Arrow string array, built from buffers (no Python objects)."""
    data = s.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(data)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))
