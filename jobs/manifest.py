"""The run manifest, `<output>/_manifest.json`, written last."""
from __future__ import annotations

import json
import re
from typing import Any

_SECRET_KEY = re.compile(r"(secret|password|token|credential|access[._-]?key|session[._-]?key)", re.I)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(value: Any, key: str = "") -> Any:
    """Drop secrets: values under secret-looking keys, and user:pass@ in URIs."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return _URI_USERINFO.sub("***@", value)
    return value


def to_json(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(redact(manifest), indent=2, sort_keys=False, default=str) + "\n").encode()
