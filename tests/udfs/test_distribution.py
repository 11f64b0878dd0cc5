"""batchscore.udfs.model.distribution: shipping the model to the workers."""
from __future__ import annotations

import os
import shutil
import uuid

import pytest

from batchscore.core.errors import ConfigError
from batchscore.udfs.model.distribution import ModelSource, _unpack_once, make_model_source, pack_model
from batchscore.udfs.model.signature import model_fingerprint


def test_pack_and_unpack_model_round_trip(multi_model: str) -> None:
    fingerprint = f"test-{uuid.uuid4().hex}"
    target = _unpack_once(pack_model(multi_model), fingerprint, "multi_model")
    try:
        assert os.path.basename(target) == "multi_model"
        assert model_fingerprint(target) == model_fingerprint(multi_model)
        assert _unpack_once(b"not used: already unpacked", fingerprint, "multi_model") == target
    finally:
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)


def test_one_model_content_under_two_folder_names(multi_model: str, tmp_path: object) -> None:
    # the same SavedModel copied to a folder of another name has the same fingerprint
    fingerprint = f"test-{uuid.uuid4().hex}"
    copy = os.path.join(str(tmp_path), "renamed_model")
    shutil.copytree(multi_model, copy)
    first = _unpack_once(pack_model(multi_model), fingerprint, "multi_model")
    try:
        second = _unpack_once(pack_model(copy), fingerprint, "renamed_model")
        assert os.path.basename(second) == "renamed_model" and os.path.dirname(second) == os.path.dirname(first)
        assert model_fingerprint(second) == model_fingerprint(first) == model_fingerprint(multi_model)
    finally:
        shutil.rmtree(os.path.dirname(first), ignore_errors=True)


def test_model_source_direct_and_bad_kind(multi_model: str) -> None:
    assert ModelSource("direct", multi_model, "f" * 16).local_path() == multi_model
    with pytest.raises(ConfigError, match=r"model.distribution must be one of broadcast, files, direct, got 'ftp'"):
        make_model_source(None, multi_model, "f" * 16, "ftp")
