"""The pieces every validated config shares: the section model, the constrained field types,
and the one translator of a pydantic error into a one-line `ConfigError`.

The scoring job's config (`job_spec`), the training config (`train_spec`) and the Python
API's arguments (`batchscore.api`) are all validated through these, so a wrong value gets
the same kind of message everywhere: the dotted key (or argument), what it must be, and
what it was.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from batchscore.core.errors import ConfigError

PositiveInt = Annotated[int, Field(strict=True, gt=0)]  # strict: no bools, no "16"
Path = Annotated[str, Field(min_length=1)]
ColumnNames = list[str]
Columns = dict[str, str | list[str]] | list[str]  # input -> column(s), or scalar columns stacked in order
PadValues = dict[str, int | float | str]  # variable-length input -> its padding value
Masks = dict[str, str]  # mask input -> the padded input it masks
Renames = dict[str, str]  # model output -> column name

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config section or an argument set: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyProblem(ValueError):
    """Raised by a validator with the whole one-line message (it names the key itself)."""


def none_is_empty(v: Any) -> Any:
    """A `before` validator: a key given as null (`pad:` with nothing under it) is an empty mapping."""
    return {} if v is None else v


@dataclass(frozen=True)
class Wording:
    """How errors of one model are worded.

    Attributes:
        subject: names what is wrong, with `{key}` the dotted key or argument name.
        required: key -> what it is, said when it is missing.
        expected: key -> what it must be, where the field's type would not say it well.
        entry_expected: mapping key -> what one of its entries must be.
    """

    subject: str = "config key '{key}'"
    required: Mapping[str, str] = field(default_factory=dict)
    expected: Mapping[str, str] = field(default_factory=dict)
    entry_expected: Mapping[str, str] = field(default_factory=dict)


def validate(model: type[M], data: Mapping[str, Any], wording: Wording) -> M:
    """`model` validated from `data`.

    Raises:
        ConfigError: one line naming the first wrong key (unknown keys first) and what it must be.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        raise ConfigError(error_message(errors[0], model, data, wording)) from None


def error_message(err: Any, root: type[BaseModel], data: Mapping[str, Any], wording: Wording) -> str:
    """One line for one pydantic error of `root` validated from `data`."""
    problem = (err.get("ctx") or {}).get("error")
    if isinstance(problem, KeyProblem):
        return str(problem)
    holder, path = _field_of(root, err["loc"])
    key = ".".join(path)
    subject = wording.subject.format(key=key)
    if err["type"] == "extra_forbidden":
        return f"unknown {subject} (known here: {', '.join(sorted(holder.model_fields))})"
    if err["type"] == "missing":
        what = wording.required.get(key)
        return f"{subject} is required" + (f" ({what})" if what else "")
    deeper = err["loc"][len(path):]
    if key in wording.entry_expected and deeper and isinstance(deeper[0], str):
        entry = wording.subject.format(key=f"{key}.{deeper[0]}")
        return f"{entry} {wording.entry_expected[key]}, got {err.get('input')!r}"
    value = _value_at(data, path, err.get("input"))
    info = holder.model_fields.get(path[-1]) if path else None
    expected = wording.expected.get(key) or _expected(info, err["type"])
    if expected:
        return f"{subject} {expected}, got {value!r}"
    return f"{subject}: {err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The choices of a Literal field (also inside `X | None`); () for any other type."""
    if typing.get_origin(annotation) is Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if literal_choices(arg):
                return literal_choices(arg)
    return ()


def _expected(info: FieldInfo | None, kind: str) -> str | None:
    """What a field must be, said from its type and the kind of error."""
    choices = literal_choices(info.annotation) if info is not None else ()
    if choices:
        return f"must be one of {', '.join(choices)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping"
    if kind.startswith("bool"):
        return "must be true or false"
    if kind.startswith("int") or kind == "greater_than":
        return "must be a positive integer" if info is not None and _is_positive(info) else "must be an integer"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_type":
        return "must be a string"
    return None


def _is_positive(info: FieldInfo) -> bool:
    """Whether the field (or the int inside its `X | None` or `list[X]`) is constrained `> 0`."""
    found = list(info.metadata)
    for arg in typing.get_args(info.annotation):
        for meta in getattr(arg, "__metadata__", ()):
            found.extend(getattr(meta, "metadata", [meta]))
    return any(getattr(m, "gt", None) == 0 for m in found)


def _value_at(data: Any, path: tuple[str, ...], default: Any) -> Any:
    """The value given for a dotted key (the whole list or mapping, not the one wrong item)."""
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


def _field_of(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel], tuple[str, ...]]:
    """(the model that holds the field, the dotted path down to the field) of an error's loc.

    A loc into a free-form mapping or list (`output.rename.x`, `output.keep_columns.0`) or
    a union member (`train.validation.float`) stops at that field; an unknown key ends the path.
    """
    holder = root
    path: list[str] = []
    for part in loc:
        model = _section_type(holder, path[-1]) if path else root
        if model is None:
            break
        holder = model
        path.append(str(part))
        if part not in model.model_fields:
            break
    return holder, tuple(path)


def _section_type(holder: type[BaseModel], name: str) -> type[BaseModel] | None:
    inner = holder.model_fields[name].annotation if name in holder.model_fields else None
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
