"""Job config: YAML file (safe loader) + `--set dotted.key=value` overrides, validated into a JobSpec
(scoring) or a TrainSpec (training)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from batchscore.config.job_spec import REQUIRED, JobSpec, parse_job_spec
from batchscore.config.train_spec import TrainSpec, parse_train_spec
from batchscore.core.errors import ConfigError

__all__ = ["REQUIRED", "JobSpec", "TrainSpec", "load_config", "load_train_config"]


def load_config(path: str | None, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML config, apply `key=value` overrides, validate once.

    Raises:
        ConfigError: naming the file or key that is wrong.
    """
    return parse_job_spec(_read_with_overrides(path, overrides))


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainSpec:
    """Read a training config (YAML + `key=value` overrides), validated once.

    Raises:
        ConfigError: naming the file or key that is wrong.
    """
    return parse_train_spec(_read_with_overrides(path, overrides))


def _read_with_overrides(path: str | None, overrides: list[str] | None) -> dict[str, Any]:
    """The YAML mapping at `path` (empty without one) with each `key=value` override set."""
    data = _read_yaml(path) if path else {}
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
    return data


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return data


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
        section = data.get("spark") or {}
        data["spark"] = section
        if not isinstance(section, dict):
            raise ConfigError(f"--set {key}: 'spark' is not a section")
        section[rest if rest.startswith("spark.") else f"spark.{rest}"] = value
        return
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value
