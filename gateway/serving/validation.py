"""What the gateway refuses in a chat request before it spends an upstream call.

Only what OpenAI's API description (``CreateChatCompletionRequest``) says, and only
cheaply: the fields routing needs (``model``, ``messages``, ``stream``, ``user``), the
shape of each message, and the bounds of the common sampling parameters. Everything
else is forwarded as sent: the upstream is the judge of the rest (``tools``,
``response_format``, ...) and answers its own 400.

:data:`PARAMS` is one table for both sides: :func:`parse_chat_request` checks it, and
``openapi.py`` documents it, so the published request schema is exactly what is
enforced. No per-request pydantic model: a request costs a few dict lookups here
(``bench/FINDINGS.md``: the chat route's CPU budget is tight).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import InvalidRequest
from gateway.core.params import checked_workload
from gateway.serving.bodies import json_object

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLES = frozenset(ROLES)


@dataclass(frozen=True, slots=True)
class Param:
    """One optional top-level parameter: its JSON schema and a check of a present value."""

    schema: dict[str, Any]
    check: Callable[[Any], bool]
    expect: str  # what the error message says it must be


def _integer(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, float) and v.is_integer()
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_param(lo: int | None = None, hi: int | None = None, nullable: bool = True) -> Param:
    schema: dict[str, Any] = {"type": ["integer", "null"] if nullable else "integer"}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    bounds = (
        f" from {lo} to {hi}"
        if lo is not None and hi is not None
        else f" ≥ {lo}"
        if lo is not None
        else ""
    )

    def check(v: Any) -> bool:
        if v is None:
            return nullable
        return _integer(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    return Param(schema, check, f"an integer{bounds}" + (" or null" if nullable else ""))


def _num_param(lo: float, hi: float) -> Param:
    def check(v: Any) -> bool:
        return v is None or (_number(v) and lo <= v <= hi)

    schema = {"type": ["number", "null"], "minimum": lo, "maximum": hi}
    return Param(schema, check, f"a number from {lo:g} to {hi:g} or null")


def _stop(v: Any) -> bool:
    return (
        v is None
        or isinstance(v, str)
        or (isinstance(v, list) and 1 <= len(v) <= 4 and all(isinstance(s, str) for s in v))
    )


WORKLOAD_HEADER = "x-flywheel-workload"

PARAMS: dict[str, Param] = {
    "stream": Param(
        {"type": ["boolean", "null"]},
        lambda v: v is None or isinstance(v, bool),
        "a boolean or null",
    ),
    "stream_options": Param(
        {"type": ["object", "null"]},
        lambda v: v is None or isinstance(v, dict),
        "an object or null",
    ),
    "user": Param({"type": "string"}, lambda v: isinstance(v, str), "a string"),
    "metadata": Param(  # OpenAI's Metadata; ``workload``'s own rule is workload_of's
        {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        lambda v: v is None or isinstance(v, dict),  # its values: below, naming the key
        "an object of strings or null",
    ),
    "max_tokens": _int_param(1),
    "max_completion_tokens": _int_param(1),
    "n": _int_param(1, 128),
    "temperature": _num_param(0, 2),
    "top_p": _num_param(0, 1),
    "presence_penalty": _num_param(-2, 2),
    "frequency_penalty": _num_param(-2, 2),
    "logprobs": Param(
        {"type": ["boolean", "null"]},
        lambda v: v is None or isinstance(v, bool),
        "a boolean or null",
    ),
    "top_logprobs": _int_param(0, 20),
    "seed": _int_param(),
    "stop": Param(
        {
            "anyOf": [
                {"type": ["string", "null"]},
                {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "string"}},
            ]
        },
        _stop,
        "a string, an array of 1 to 4 strings, or null",
    ),
}

# Roles whose message must carry ``content`` (an assistant's may carry tool calls instead).
CONTENT_REQUIRED = frozenset(ROLES) - {"assistant"}
# Roles whose ``content`` may be null: an assistant's (tool calls instead) and a
# function's (OpenAI's ChatCompletionRequestFunctionMessage: a string or null).
NULL_CONTENT = frozenset({"assistant", "function"})


def _role(m: dict[str, Any]) -> str | None:
    role = m.get("role")
    return role if type(role) is str else None  # an object or array is no role (unhashable)


def _message_problem(i: int, m: Any) -> InvalidRequest | None:
    if not isinstance(m, dict):
        return InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
    role = _role(m)
    if role not in _ROLES:
        return InvalidRequest(
            f"messages[{i}].role must be one of {', '.join(ROLES)}, not {_show(m.get('role'))}.",
            param=f"messages[{i}].role",
        )
    if "content" in m:
        content = m["content"]
        if not (isinstance(content, (str, list)) or (content is None and role in NULL_CONTENT)):
            return InvalidRequest(
                f"messages[{i}].content must be a string or an array of content parts.",
                param=f"messages[{i}].content",
            )
    elif role in CONTENT_REQUIRED:
        return InvalidRequest(
            f"messages[{i}].content is required for a {role} message.",
            param=f"messages[{i}].content",
        )
    if "name" in m and not isinstance(m["name"], str):
        return InvalidRequest(f"messages[{i}].name must be a string.", param=f"messages[{i}].name")
    return None


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """The body as a chat request, checked as described above; InvalidRequest names the field."""
    doc = json_object(body)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array.", param="messages"
        )
    for i, m in enumerate(messages):
        if (
            type(m) is dict
            and type(m.get("content")) is str
            and type(role := m.get("role")) is str
            and role in _ROLES
        ):
            if "name" not in m or type(m["name"]) is str:
                continue  # the common case, checked in one line
        problem = _message_problem(i, m)
        if problem is not None:
            raise problem
    for name, value in doc.items():
        param = PARAMS.get(name)
        if param is not None and not param.check(value):
            raise InvalidRequest(
                f"'{name}' must be {param.expect}, not {_show(value)}.", param=name
            )
    if type(meta := doc.get("metadata")) is dict:
        for key, v in meta.items():
            if type(v) is not str:
                raise InvalidRequest(
                    f"'metadata.{key}' must be a string, not {_show(v)}.", param=f"metadata.{key}"
                )
    return doc


def workload_of(doc: dict[str, Any], header: str | None) -> str | None:
    """The workload a request names: ``metadata.workload`` (it comes first), else the
    ``x-flywheel-workload`` header; a name like a model's (letters, digits, ``. _ -``,
    at most 64 characters). It is taken out of the ``metadata`` sent upstream (OpenAI
    refuses ``metadata`` without ``store``; it is Flywheel's label, not the model's)."""
    meta = doc.get("metadata")  # a map of strings: parse_chat_request checked it
    if isinstance(meta, dict) and "workload" in meta:
        value, param = meta["workload"], "metadata.workload"
        rest = {k: v for k, v in meta.items() if k != "workload"}
        if rest:
            doc["metadata"] = rest
        else:
            del doc["metadata"]
    elif header is not None:
        value, param = header, WORKLOAD_HEADER
    else:
        return None
    return checked_workload(value, param, blank=False)


def _show(value: Any) -> str:
    return reprlib.repr(value)  # bounded, however large the value
