"""Job config: YAML file (safe loader) + `--set dotted.key=value` overrides, checked."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from batchscore.udfs.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "spark": {},
    "input": {
        "path": None,
        "format": "parquet",
        "filter": None,
        "columns": {},
        "lane": "auto",
        "ignore_corrupt_files": False,
        "pad": {},  # variable-length input -> padding value
        "pad_multiple": 1,
        "mask": {},  # mask input -> the padded input whose row lengths fill it
    },
    "model": {
        "path": None,
        "signature": "serving_default",
        "batch_size": 1024,
        "distribution": "broadcast",
    },
    "output": {
        "path": None,
        "mode": "error",
        "partition_by": [],
        "keep_columns": [],
        "rename": {},
    },
    "quarantine": {"path": None, "on_bad_rows": "quarantine"},
}

REQUIRED = ("input.path", "model.path", "output.path")
CHOICES = {
    "input.format": ("parquet", "delta", "orc", "table"),
    "input.lane": ("auto", "dataframe", "arrow"),
    "model.distribution": ("broadcast", "files", "direct"),
    "output.mode": ("error", "overwrite", "append", "overwrite_partitions"),
    "quarantine.on_bad_rows": ("quarantine", "fail"),
}
# Sections whose keys are free-form (Spark conf, column maps).
FREE_FORM = ("spark", "input.columns", "input.pad", "input.mask", "output.rename")


def load_config(path: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply `key=value` overrides, fill defaults, validate.

    Raises:
        ConfigError: naming the file or key that is wrong.
    """
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
    cfg = _merge(copy.deepcopy(DEFAULTS), data, "")
    _validate(cfg)
    return cfg


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}' must look like dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set '{item}': value is not a YAML scalar or list") from None
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "spark":  # Spark keys contain dots themselves: spark.master or spark.spark.master
        rest = ".".join(parts[1:])
        data.setdefault("spark", {})[rest if rest.startswith("spark.") else f"spark.{rest}"] = value
        return
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any], prefix: str) -> dict[str, Any]:
    for k, v in extra.items():
        dotted = f"{prefix}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key '{dotted}' (known here: {', '.join(sorted(base))})")
        if dotted in FREE_FORM:
            base[k] = v if v is not None else type(base[k])()
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping")
            _merge(base[k], v, dotted + ".")
        else:
            base[k] = v
    return base


def get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _validate(cfg: dict[str, Any]) -> None:
    for key in REQUIRED:
        v = get(cfg, key)
        if not v or not isinstance(v, str):
            raise ConfigError(f"config key '{key}' is required (a path)")
    for key, choices in CHOICES.items():
        v = get(cfg, key)
        if v not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {v!r}")
    bs = cfg["model"]["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ConfigError(f"config key 'model.batch_size' must be a positive integer, got {bs!r}")
    for key in ("output.partition_by", "output.keep_columns"):
        v = get(cfg, key)
        if isinstance(v, str):
            v = [v]
            node, leaf = key.split(".")
            cfg[node][leaf] = v
        if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
            raise ConfigError(f"config key '{key}' must be a list of column names")
    for key in ("output.rename", "spark"):
        if not isinstance(get(cfg, key) or {}, dict):
            raise ConfigError(f"config key '{key}' must be a mapping")
    cols = cfg["input"]["columns"]
    if cols is None:
        cfg["input"]["columns"] = {}
    elif not isinstance(cols, (dict, list)):
        raise ConfigError("config key 'input.columns' must be a mapping (input -> column) or a list of columns")
    if not isinstance(cfg["input"]["ignore_corrupt_files"], bool):
        raise ConfigError("config key 'input.ignore_corrupt_files' must be true or false")
    _validate_padding(cfg["input"])


def _validate_padding(inp: dict[str, Any]) -> None:
    """input.pad / input.mask are mappings keyed by input name; input.pad_multiple a positive int."""
    for key in ("pad", "mask"):
        if inp[key] is None:
            inp[key] = {}
        if not isinstance(inp[key], dict):
            raise ConfigError(f"config key 'input.{key}' must be a mapping (input name -> "
                              + ("padding value)" if key == "pad" else "padded input name)"))
    for name, value in inp["pad"].items():
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"config key 'input.pad.{name}' must be a scalar padding value, got {value!r}")
    for name, source in inp["mask"].items():
        if not isinstance(source, str):
            raise ConfigError(f"config key 'input.mask.{name}' must name the padded input it masks, got {source!r}")
    m = inp["pad_multiple"]
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"config key 'input.pad_multiple' must be a positive integer, got {m!r}")
