"""Read a SavedModel's signature on the driver, without loading its variables."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchscore.core.errors import ModelError
from batchscore.udfs.model import tensor_types
from batchscore.udfs.model.cache import load_keras_file
from batchscore.udfs.model.saved_model_proto import dtype_name, parse_saved_model


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: key, TF dtype name, shape without the batch dim."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]  # inner shape; () for one scalar per row

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d or 0
        return n

    @property
    def variable(self) -> bool:
        """Whether the first inner dimension is unknown (`[None, None, ...]`: token ids, masks)."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def position_size(self) -> int:
        """Values per position of a variable input: the product of the fixed dims after the first."""
        n = 1
        for d in self.shape[1:]:
            n *= d or 0
        return n


@dataclass(frozen=True)
class ModelSignature:
    """The typed interface of one signature of a SavedModel."""

    path: str
    signature: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fingerprint: str

    def output_schema(self, rename: dict[str, str] | None = None) -> pa.Schema:
        """Arrow schema of the prediction columns (one per output key).

        A `[batch, 1]` output is written as a scalar column: one score per row.
        """
        rename = rename or {}
        return pa.schema(
            [
                pa.field(
                    rename.get(o.name, o.name),
                    tensor_types.arrow_output_type(o.dtype, len(output_shape(o))),
                    nullable=True,
                )
                for o in self.outputs
            ]
        )


def output_shape(spec: TensorSpec) -> tuple[int | None, ...]:
    """Shape of an output column per row: `[batch, 1]` outputs become scalars."""
    return () if spec.shape == (1,) else spec.shape


def is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def model_fingerprint(path: str) -> str:
    """A content hash of the model directory: same bytes, same fingerprint."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [path]
        root = os.path.dirname(path)
    else:
        root = path
        files = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
        )
    for f in files:
        h.update(os.path.relpath(f, root).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def read_signature(path: str, signature: str = "serving_default") -> ModelSignature:
    """Parse `saved_model.pb` for the named signature's typed inputs and outputs.

    Raises:
        ModelError: the path is not a SavedModel, or has no such signature, or the
            signature uses a dtype or shape the engine cannot feed. An input whose
            first inner dimension is unknown is returned as is: binding refuses it
            unless `input.pad` (or `input.mask`) names it.
    """
    if not os.path.exists(path):
        raise ModelError(f"model.path '{path}' does not exist")
    if path.endswith(".keras"):
        return _read_keras_signature(path, signature)
    if not is_saved_model(path):
        raise ModelError(f"model.path '{path}' is not a TensorFlow SavedModel (no saved_model.pb)")
    try:  # the protobuf package alone: no TensorFlow import on the driver (seconds)
        with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
            sm = parse_saved_model(fh.read())
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways; all are this ModelError
        raise ModelError(f"model.path '{path}': saved_model.pb cannot be parsed ({e})") from None
    defs = {}
    for mg in sm.meta_graphs:
        defs.update(mg.signature_def)
    public = sorted(k for k in defs if not k.startswith("__"))
    if signature not in defs:
        raise ModelError(
            f"model.signature '{signature}' not found in '{path}'; it has: {', '.join(public) or 'none'}"
        )
    sig = defs[signature]

    def spec(key: str, info: Any, role: str) -> TensorSpec:
        dtype = dtype_name(info.dtype)
        dims = [d.size for d in info.tensor_shape.dim]
        if info.tensor_shape.unknown_rank or not dims:
            raise ModelError(
                f"signature {role} '{key}' has no batch dimension (shape {dims or 'unknown'}); "
                "export the model with a leading batch dimension"
            )
        inner = tuple(None if d < 0 else d for d in dims[1:])
        if not tensor_types.supported(dtype):
            raise ModelError(f"signature {role} '{key}' has dtype {dtype}, which cannot be fed from Spark")
        # An unknown first inner dimension is fed by padding (input.pad; checked when the
        # inputs are bound); unknown dimensions after it cannot be fed.
        if role == "input" and any(d is None for d in inner[1:]):
            raise ModelError(
                f"signature input '{key}' has shape {[None, *inner]} with an unknown inner dimension "
                "after the first; only the first inner dimension may vary (input.pad), "
                "export the model with fixed dimensions after it"
            )
        return TensorSpec(key, dtype, inner)

    inputs = tuple(spec(k, sig.inputs[k], "input") for k in sorted(sig.inputs))
    outputs = tuple(spec(k, sig.outputs[k], "output") for k in sorted(sig.outputs))
    return ModelSignature(os.path.abspath(path), signature, inputs, outputs, model_fingerprint(path))


def _read_keras_signature(path: str, signature: str) -> ModelSignature:
    """A `.keras` file: inputs and outputs from the model's Input and output layers."""
    model = load_keras_file(path)
    inputs = tuple(
        TensorSpec(t.name.split(":")[0], _keras_dtype(t.dtype), tuple(t.shape[1:]))
        for t in model.inputs
    )
    outs = model.outputs
    outputs = tuple(
        TensorSpec(f"output_{i}" if len(outs) > 1 else "output_0", _keras_dtype(t.dtype), tuple(t.shape[1:]))
        for i, t in enumerate(outs)
    )
    return ModelSignature(os.path.abspath(path), signature, inputs, outputs, model_fingerprint(path))


def _keras_dtype(d: object) -> str:
    return str(getattr(d, "name", d))
