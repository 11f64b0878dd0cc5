"""batchscore.udfs.model.signature: a real SavedModel's signature, read on the driver; fingerprints."""
from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest

from batchscore.core.errors import ModelError
from batchscore.udfs.model.signature import model_fingerprint, read_signature
from tests import support

# --- a real SavedModel: signature, loading, cache ---


def test_read_signature_of_a_custom_tf_function_model(multi_model: str) -> None:
    sig = read_signature(multi_model)
    assert {(s.name, s.dtype, s.shape) for s in sig.inputs} == {
        ("image", "float32", (8, 8, 3)), ("numeric", "float32", (4,)),
        ("category", "string", ()), ("count", "int64", ()),
    }
    assert [o.name for o in sig.outputs] == sorted(support.MULTI_OUTPUTS)
    schema = sig.output_schema()
    assert schema.field("score").type == pa.float32()
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert schema.field("grid").type == pa.list_(pa.list_(pa.float32()))
    assert schema.field("label").type == pa.string()
    assert schema.field("doubled").type == pa.int64()
    assert sig.fingerprint == model_fingerprint(multi_model)
    assert sig.path == os.path.abspath(multi_model)


def test_read_signature_errors_name_the_path_and_signature(multi_model: str, tmp_path) -> None:
    with pytest.raises(ModelError, match=r"model.path '.*/nowhere' does not exist"):
        read_signature(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"'.*/empty' is not a TensorFlow SavedModel"):
        read_signature(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=r"model.signature 'nope' not found .* it has: serving_default"):
        read_signature(multi_model, "nope")


def test_fingerprint_follows_content(multi_model: str, tmp_path) -> None:
    same = shutil.copytree(multi_model, tmp_path / "same")
    changed = support.fresh_copy(multi_model, str(tmp_path))
    assert model_fingerprint(str(same)) == model_fingerprint(multi_model)
    assert model_fingerprint(changed) != model_fingerprint(multi_model)
