"""Notebook parameters: Databricks widgets, or their defaults outside Databricks."""
from __future__ import annotations

import os
from typing import Any


class WidgetShim:
    """`dbutils.widgets` outside Databricks: the defaults, or BATCHSCORE_WIDGET_<NAME> from the environment."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def text(self, name: str, defaultValue: str, label: str | None = None) -> None:  # dbutils.widgets.text names it so
        self._values[name] = os.environ.get(f"BATCHSCORE_WIDGET_{name.upper()}", defaultValue)

    def get(self, name: str) -> str:
        return self._values[name]


def notebook_params(widgets: dict[str, tuple[str, str]], dbutils: Any = None) -> dict[str, str]:
    """Declare text widgets `{name: (default, label)}` and read their values, stripped.

    Args:
        widgets: the notebook's parameters.
        dbutils: Databricks' `dbutils` in a notebook there; None elsewhere (defaults, or the
            BATCHSCORE_WIDGET_<NAME> environment variables).
    """
    w = dbutils.widgets if dbutils is not None else WidgetShim()
    for name, (default, label) in widgets.items():
        w.text(name, default, label)
    return {name: w.get(name).strip() for name in widgets}
