"""The configuration reference page, generated from the settings models.

``python -m retrain.config_reference > docs/configuration-reference.md`` writes it;
``tests/test_docs.py`` fails when the page and the models disagree, so it cannot drift.
Every key is listed with its type, its default and its description. It lives in the
retrain package because that is the one that sees the whole file: the gateway's sections
(``gateway/core/config.py``) and the ``retrain`` section (``retrain/config.py``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.core.config import DEFAULT_CONFIG

from .config import RetrainSettings


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__} of " + ", ".join(_type(a) for a in args)
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, SecretStr):
        return "`''`" if not value.get_secret_value() else "(set)"
    if isinstance(value, Path):
        value = str(value)
    return "`" + orjson.dumps(value, default=str).decode() + "`"


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The settings model a field holds (directly, in a dict or a list), and its path suffix."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _model_of(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".NAME"
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    for arg in args if origin in (typing.Union, types.UnionType) else ():
        found = _model_of(arg)
        if found[0] is not None:
            return found
    return None, ""


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key path, type, default, description) of every leaf key, depth first."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, suffix = _model_of(field.annotation)
        if inner is not None and suffix:  # a mapping or list of sections
            yield path, _type(field.annotation), _default(field), field.description or ""
        if inner is not None:
            yield from rows(inner, f"{path}{suffix}.")
        else:
            yield path, _type(field.annotation), _default(field), field.description or ""


def _quick_start(doc: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in doc.items():
        if isinstance(value, dict) and prefix.count(".") < 2 and key not in ("arms",):
            yield from _quick_start(value, f"{prefix}{key}.")
        else:
            yield f"- `{prefix}{key}`: `{orjson.dumps(value).decode()}`"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Every key of the config file, with its type and default. Generated from the",
        "settings models by `python -m retrain.config_reference`; a test fails when this",
        "page is stale. The `retrain` section's schema belongs to the retrain package (the",
        "gateway reads only `retrain.dataset_dir`); the rest is the gateway's.",
        "`gateway check-config` validates the gateway's sections, `retrain check-config` the",
        "whole file; `gateway config show` and `retrain config show` print the effective config.",
        "",
        "With no config file (the quick-start stack, `gateway up`), these are set too:",
        "",
        *_quick_start(DEFAULT_CONFIG),
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for path, kind, default, description in rows(RetrainSettings):
        text = " ".join(description.split()).replace("|", "\\|")
        out.append(f"| `{path}` | {kind} | {default} | {text} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
