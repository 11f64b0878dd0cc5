"""The model host's wire format: named tensors as Arrow IPC messages over a Unix socket.

A message is an 8-byte big-endian length (`HEADER`), then one Arrow IPC stream holding a
schema and at most one record batch: one column per tensor, one row per tensor row (the
tensors of a message share their leading dimension `n`; `_column` has the encoding). The
schema's metadata carries the message's fields (`op`: `hello` | `predict` in a request;
host id, loads, `error` in a reply), all strings. Numeric columns are written and read
without copies.
"""
from __future__ import annotations

import json
import math
import socket
import struct

import numpy as np
import pyarrow as pa

HEADER = struct.Struct(">Q")
_NATIVE_KINDS = "biuf"  # bool, signed, unsigned, float: Arrow has a type for each numpy size


def encode(arrays: dict[str, np.ndarray], fields: dict[str, str] | None = None) -> pa.Buffer:
    """One message body: `arrays` (same leading dimension) and the message `fields`."""
    cols, schema_fields = [], []
    for name, a in arrays.items():
        field, col = _column(name, np.asarray(a))
        schema_fields.append(field)
        cols.append(col)
    schema = pa.schema(schema_fields, metadata=fields or {})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        if cols:
            writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
    return sink.getvalue()


def decode(body: pa.Buffer | bytes | bytearray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, message fields) of one message body; numeric tensors are read-only views of `body`."""
    reader = pa.ipc.open_stream(pa.py_buffer(body) if not isinstance(body, pa.Buffer) else body)
    fields = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
    batches = list(reader)
    if not batches:
        return {}, fields
    batch = batches[0]
    return {f.name: _tensor(f, batch.column(i)) for i, f in enumerate(batch.schema)}, fields


def send(sock: socket.socket, arrays: dict[str, np.ndarray], fields: dict[str, str] | None = None) -> None:
    body = encode(arrays, fields)
    sock.sendall(HEADER.pack(body.size))
    sock.sendall(memoryview(body))


def recv(sock: socket.socket) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The next message on `sock`.

    Raises:
        EOFError: the peer closed the connection (before or inside a message).
    """
    (size,) = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    return decode(_recv_exactly(sock, size))


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += n
    return buf


def _column(name: str, a: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """A tensor as a schema field and its column.

    - a tensor `[n]` is a plain column of its Arrow type;
    - a tensor `[n, *inner]` is a `fixed_size_list<prod(inner)>` column of its values
      in row-major order, `inner` in the field's metadata (`shape`, a JSON list);
    - numeric and bool tensors keep their Arrow type (`kind: native`), string tensors
      (numpy object arrays of str or bytes) are string or binary columns (`kind: object`),
      anything else (e.g. bfloat16) travels as its raw bytes, `uint8` values
      (`kind: raw`); the numpy dtype is in `dtype` (its name for raw bytes, e.g. `bfloat16`).
    """
    """One tensor as (field, column): see the module docstring."""
    if a.ndim == 0:
        raise ValueError(f"tensor '{name}' has no row dimension")
    n, inner = a.shape[0], [int(d) for d in a.shape[1:]]
    size = math.prod(inner)
    if a.dtype == object:
        kind, values = "object", pa.array(a.reshape(-1).tolist())
    elif a.dtype.kind in _NATIVE_KINDS:
        kind, values = "native", pa.array(np.ascontiguousarray(a).reshape(-1))
    else:  # [n, size * itemsize] bytes per row
        kind, size = "raw", size * a.dtype.itemsize
        values = pa.array(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    col = pa.FixedSizeListArray.from_arrays(values, size) if inner or kind == "raw" else values
    if len(col) != n:
        raise ValueError(f"tensor '{name}' of shape {a.shape} does not fit {n} rows")
    meta = {"shape": json.dumps(inner), "dtype": a.dtype.name if kind == "raw" else a.dtype.str, "kind": kind}
    return pa.field(name, col.type, metadata=meta), col


def _tensor(field: pa.Field, col: pa.Array) -> np.ndarray:
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    inner, kind = json.loads(meta["shape"]), meta["kind"]
    n = len(col)
    values = col.flatten() if pa.types.is_fixed_size_list(col.type) else col
    if kind == "object":
        return values.to_numpy(zero_copy_only=False).astype(object, copy=False).reshape(n, *inner)
    if kind == "raw":
        return values.to_numpy().view(_extension_dtype(meta["dtype"])).reshape(n, *inner)
    return values.to_numpy(zero_copy_only=False).astype(np.dtype(meta["dtype"]), copy=False).reshape(n, *inner)


def _extension_dtype(name: str) -> np.dtype:
    """A numpy dtype by name, also those of ml_dtypes (bfloat16, float8_*) that TensorFlow uses."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # noqa: PLC0415 - installed with TensorFlow; only tensors of its types need it

        return np.dtype(getattr(ml_dtypes, name))
