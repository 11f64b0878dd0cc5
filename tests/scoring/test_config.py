"""batchscore.config.loader + batchscore.config.job_spec: YAML, --set overrides and the typed JobSpec's errors."""
from __future__ import annotations

import pytest

from batchscore.config.loader import load_config
from batchscore.core.errors import ConfigError

# --- config ---

PATHS = ["input.path=/data/in", "model.path=/models/m", "output.path=/data/out"]


def test_load_config_defaults() -> None:
    cfg = load_config(None, PATHS)
    assert cfg.input.model_dump() == {
        "path": "/data/in", "format": "parquet", "filter": None, "columns": {}, "lane": "auto",
        "ignore_corrupt_files": False, "pad": {}, "pad_multiple": 1, "mask": {},
        "version": None, "timestamp": None}
    assert cfg.model.model_dump() == {"path": "/models/m", "signature": "serving_default", "batch_size": 1024,
                                      "distribution": "broadcast", "sharing": "worker", "placement": "replicate",
                                      "gpu_memory_mb": None, "host_wait_ms": 5.0, "warmup": False}
    assert cfg.output.model_dump() == {"path": "/data/out", "format": "parquet", "mode": "error", "partition_by": [],
                                       "keep_columns": [], "rename": {}}
    assert cfg.quarantine.model_dump() == {"path": None, "on_bad_rows": "quarantine"}
    assert cfg.spark == {}


def test_load_config_set_parses_yaml_values() -> None:
    cfg = load_config(None, [
        *PATHS,
        "model.batch_size=2048",
        "output.keep_columns=[id, as_of_date]",
        "output.partition_by=as_of_date",
        "input.columns.numeric=[f0, f1, f2]",
        "input.columns.category=cat",
        "output.rename.output_0=p",
        "input.filter=age > 40 AND region = 'north'",
        "spark.spark.master=local[2]",
        "spark.sql.shuffle.partitions=4",  # the section name may be left out
        "input.ignore_corrupt_files=true",
    ])
    assert cfg.model.batch_size == 2048
    assert cfg.output.keep_columns == ["id", "as_of_date"]
    assert cfg.output.partition_by == ["as_of_date"]
    assert cfg.input.columns == {"numeric": ["f0", "f1", "f2"], "category": "cat"}
    assert cfg.output.rename == {"output_0": "p"}
    assert cfg.input.filter == "age > 40 AND region = 'north'"
    assert cfg.spark == {"spark.master": "local[2]", "spark.sql.shuffle.partitions": 4}
    assert cfg.input.ignore_corrupt_files is True


def test_load_config_delta_time_travel_and_output_format() -> None:
    cfg = load_config(None, [*PATHS, "input.format=delta", "input.timestamp=2026-09-30", "output.format=delta"])
    assert (cfg.input.timestamp, cfg.input.version, cfg.output.format) == ("2026-09-30", None, "delta")
    cfg = load_config(None, [*PATHS, "input.format=delta", "input.timestamp=2026-09-30 12:00:00"])
    assert cfg.input.timestamp == "2026-09-30 12:00:00"  # YAML's datetime, back to Spark's text
    assert load_config(None, [*PATHS, "input.format=delta", "input.version=0"]).input.version == 0
    for overrides, message in [
        (["input.version=3"], r"^config key 'input.version' \(time travel\) needs input.format delta, got 'parquet'$"),
        (["input.format=table", "input.timestamp=2026-09-30"], r"^config key 'input.timestamp' \(time travel\)"),
        (["input.format=delta", "input.version=1", "input.timestamp=2026-09-30"],
         r"^config keys 'input.version' and 'input.timestamp' are mutually exclusive; set one$"),
        (["input.format=delta", "input.version=-1"], r"^config key 'input.version' must be a Delta table version"),
        (["output.format=orc"], r"^config key 'output.format' must be one of parquet, delta, got 'orc'$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*PATHS, *overrides])


def test_load_config_accepts_the_padding_keys() -> None:
    cfg = load_config(None, [*PATHS, "input.pad.tokens=0", "input.pad.scale=0.5", "input.pad.word=''",
                             "input.pad_multiple=8", "input.mask.tokens_mask=tokens"])
    assert cfg.input.pad == {"tokens": 0, "scale": 0.5, "word": ""}
    assert cfg.input.pad_multiple == 8 and cfg.input.mask == {"tokens_mask": "tokens"}


def test_load_config_file_then_overrides(tmp_path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(
        "spark:\n  spark.master: local[1]\n"
        "input: {path: /a, columns: {numeric: [x, y]}}\n"
        "model: {path: /m, batch_size: 8}\n"
        "output: {path: /o, keep_columns: [id]}\n"
    )
    cfg = load_config(str(f), ["model.batch_size=16", "output.mode=overwrite"])
    assert cfg.model.batch_size == 16 and cfg.output.mode == "overwrite"
    assert cfg.input.columns == {"numeric": ["x", "y"]} and cfg.output.keep_columns == ["id"]
    assert cfg.spark == {"spark.master": "local[1]"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.bogus=1"], r"unknown config key 'model.bogus'"),
        (["bogus.key=1"], r"unknown config key 'bogus'"),
        (["model.batch_size"], r"--set 'model.batch_size' must look like dotted.key=value"),
        (["=3"], r"--set '=3' has an empty key"),
        (["model..path=x"], r"--set 'model..path=x' has an empty key"),
        (["model.batch_size=[1"], r"--set 'model.batch_size=\[1': value is not a YAML scalar or list"),
        (["model.batch_size=0"], r"'model.batch_size' must be a positive integer, got 0"),
        (["model.batch_size=many"], r"'model.batch_size' must be a positive integer, got 'many'"),
        (["model.distribution=ftp"], r"'model.distribution' must be one of broadcast, files, direct, got 'ftp'"),
        (["output.mode=replace"], r"'output.mode' must be one of"),
        (["model.path=x.y=z", "model.path.deeper=1"], r"--set model.path.deeper: 'path' is not a section"),
        (["output.keep_columns=[1, 2]"], r"'output.keep_columns' must be a list of column names"),
        (["input.colums=[a]"], r"^unknown config key 'input.colums' \(known here: columns, filter, format, "
                               r"ignore_corrupt_files, lane, mask, pad, pad_multiple, path, timestamp, version\)$"),
        (["input.pad_multiple=0"], r"^config key 'input.pad_multiple' must be a positive integer, got 0$"),
        (["input.pad.tokens=[0]"], r"^config key 'input.pad.tokens' must be a scalar padding value"),
        (["input.mask.tokens=1"], r"^config key 'input.mask.tokens' must name the padded input it masks"),
        (["input.lane=fast"], r"^config key 'input.lane' must be one of auto, dataframe, arrow, got 'fast'$"),
        (["input.ignore_corrupt_files=maybe"],
         r"^config key 'input.ignore_corrupt_files' must be true or false, got 'maybe'$"),
        (["output.keep_columns=[1, 2]"], r"^config key 'output.keep_columns' must be a list of column names, "
                                         r"got \[1, 2\]$"),  # the value given, not the one wrong item
        (["input.path=''"], r"^config key 'input.path' must not be empty, got ''$"),
        (["model=3"], r"^config key 'model' must be a mapping, got 3$"),
        (["model.gpu_memory_mb=0"], r"^config key 'model.gpu_memory_mb' must be a positive integer \(MB"),
        (["input.columns=3"], r"^config key 'input.columns' must be a mapping"),
        (["model.batch_size=true"], r"'model.batch_size' must be a positive integer, got True"),
    ],
)
def test_load_config_rejects_bad_overrides(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*PATHS, *overrides])


def test_load_config_requires_paths_and_an_existing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'input.path' is required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match=r"config key 'output.path' is required"):
        load_config(None, PATHS[:2])
    with pytest.raises(ConfigError, match=r"config file '.*/missing.yaml' not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config file '.*/bad.yaml' is not valid YAML"):
        load_config(str(bad))
