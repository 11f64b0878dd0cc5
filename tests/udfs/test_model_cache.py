"""batchscore.udfs.model.cache: loading a SavedModel like bare TensorFlow, once per key."""
from __future__ import annotations

import pyarrow as pa
import pytest

from batchscore.core.errors import ModelError
from batchscore.udfs.model import cache as model_cache
from batchscore.udfs.model.signature import model_fingerprint
from tests import support


def test_load_saved_model_predicts_like_bare_tensorflow(multi_model: str, multi_table: pa.Table) -> None:
    _, predict = model_cache.load_saved_model(multi_model, "serving_default")
    inputs = support.multi_inputs(multi_table)
    expected = support.tf_predict(multi_model, inputs)
    got = predict(inputs)
    assert sorted(got) == sorted(support.MULTI_OUTPUTS)
    for k in ("score", "embedding", "grid", "doubled"):
        assert got[k].shape == expected[k].shape
        assert support.max_abs_diff(got[k], expected[k]) <= 1e-5, k
    assert got["label"].tolist() == expected["label"].tolist()
    # A short batch goes through the same concrete function and gives the same numbers.
    part = predict({k: v[:3] for k, v in inputs.items()})
    assert support.max_abs_diff(part["score"], expected["score"][:3]) <= 1e-5


def test_load_saved_model_errors(multi_model: str, tmp_path) -> None:
    with pytest.raises(ModelError, match="cannot load SavedModel"):
        model_cache.load_saved_model(str(tmp_path), "serving_default")
    with pytest.raises(ModelError, match=r"model.signature 'nope' not found"):
        model_cache.load_saved_model(multi_model, "nope")


@pytest.fixture
def empty_model_cache(monkeypatch):
    """This process plays a fresh worker: no model cached, none loaded (restored afterwards)."""
    monkeypatch.setattr(model_cache, "_cache", {})
    monkeypatch.setattr(model_cache, "_loads", 0)


@pytest.mark.usefixtures("empty_model_cache")
def test_model_cache_loads_once_per_key(multi_model: str) -> None:
    loads: list[str] = []

    def load():
        loads.append(multi_model)
        return model_cache.load_saved_model(multi_model, "serving_default")

    key = model_fingerprint(multi_model) + "/serving_default"
    first = model_cache.get_predict_fn(key, load)
    second = model_cache.get_predict_fn(key, load)
    assert first is second
    assert loads == [multi_model] and model_cache.load_count() == 1
    model_cache.get_predict_fn(key + "-other", load)
    assert len(loads) == 2 and model_cache.load_count() == 2
