"""The gateway's OpenAPI description (``GET /openapi.json``), made truthful.

Routes are declared in tables (:data:`gateway.serving.routes.ROUTES`,
:data:`gateway.admin.admin.ROUTES`): each :class:`Operation` holds a handler and what the
document says of it, side by side, so a route cannot be added without its description.
:func:`mount` adds a table to the app; :func:`install` replaces ``app.openapi`` with
FastAPI's document completed from the tables: each operation's request body, its
responses (every error in OpenAI's shape, :data:`ERROR`), and bearer security. (The
routes read their bodies raw, ``bodies.py``, and the chat route is served outside FastAPI,
``app.serving_app``, so FastAPI alone would describe no request body, no error and no key.)

The schemas come from what the gateway enforces, never a copy kept by hand: the chat
request from :data:`gateway.serving.validation.PARAMS`, the admin bodies from the config's
pydantic models, the rating limits from the running settings. ``tests/test_fuzz.py``
fuzzes the gateway with this document (schemathesis) and checks every answer against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from gateway.control.apikeys import KeySpec, TenantSpec
from gateway.core.config import NAME_MAX, NAME_PATTERN, Arm, Experiment, ModelVersion, Settings
from gateway.serving.embeddings import MAX_INPUTS
from gateway.serving.feedback import MAX_PASSAGE_CHARS, MAX_PASSAGES
from gateway.serving.validation import CONTENT_REQUIRED, NULL_CONTENT, PARAMS

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


ERROR = {
    "type": "object",
    "description": "Every error, as OpenAI sends it (the openai SDK raises its exception).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"], "description": "the offending field"},
                "code": {"type": ["string", "null"], "examples": ["model_not_found"]},
            },
        }
    },
}

STATUS_TEXT = {
    400: "Invalid request: `param` names the field",
    401: "Missing or wrong API key",
    403: "A client key where an admin key is needed",
    404: "Not found",
    409: "The current state forbids the change",
    413: "Body over `limits.max_body_bytes`",
    415: "Content-Type is not `application/json`",
    429: "Rate limit or quota exceeded",
    502: "The upstream failed (unreachable, reset, malformed, 5xx, every circuit open)",
    503: "Redis (the store) is unavailable",
    504: "The upstream did not answer in time",
}


def _header(description: str, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def error_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def errors(*statuses: int) -> dict[str, Any]:
    out = {str(s): error_answer(STATUS_TEXT[s]) for s in statuses}
    if "401" in out:
        out["401"]["headers"] = {"www-authenticate": _header("`Bearer`", required=True)}
    return out


ARM_LANGUAGE = {
    "type": "object",
    "description": "The arm's share of answers written in the language of the question, "
    "over a sample: the arm's latest 200 answered interactions of the experiment's current "
    "version still in Redis (the hot window), found among the newest 5000 interactions. "
    "Only answers whose question's and own language can be told count.",
    "required": ["sample", "known", "same", "share", "since"],
    "properties": {
        "sample": {"type": "integer", "minimum": 0, "description": "interactions read"},
        "known": {
            "type": "integer",
            "minimum": 0,
            "description": "of those, where both languages could be told",
        },
        "same": {"type": "integer", "minimum": 0, "description": "of those, in one language"},
        "share": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "since": {
            "type": ["integer", "null"],
            "description": "unix time of the oldest interaction in the sample",
        },
    },
}

CHAT_HEADERS = {
    "x-request-id": _header("the client's own (if valid), else a new one", required=True),
    "x-flywheel-arm": _header("the model that answered", required=True),
    "x-flywheel-experiment": _header("the experiment, when `model` named one"),
    "x-flywheel-fallback-from": _header("the assigned arm, when the fallback answered"),
}


def answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def body(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        out["description"] = description
    return out


def listing(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            **extra,
        },
    }


def chat_request_schema() -> dict[str, Any]:
    content = {"anyOf": [{"type": "string"}, {"type": "array"}]}
    message = {
        "anyOf": [
            {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": sorted(CONTENT_REQUIRED - NULL_CONTENT)},
                    "content": content,
                    "name": {"type": "string"},
                },
            },
            {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"const": "function"},
                    "content": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "name": {"type": "string"},
                },
                "description": "a function's content may be null (OpenAI's function message)",
            },
            {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"const": "assistant"},
                    "content": {"anyOf": [*content["anyOf"], {"type": "null"}]},
                    "name": {"type": "string"},
                },
                "description": "an assistant's content may be null or absent (tool calls)",
            },
        ]
    }
    return {
        "type": "object",
        "description": (
            "OpenAI's CreateChatCompletionRequest. The gateway checks the fields listed "
            "here; any other field is forwarded to the upstream as sent, which judges it."
        ),
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "an experiment or a model (GET /v1/models)",
            },
            "messages": {"type": "array", "minItems": 1, "items": message},
            **{name: dict(p.schema) for name, p in PARAMS.items()},
        },
        "additionalProperties": True,
    }


CHAT_COMPLETION = {
    "type": "object",
    "description": "OpenAI's CreateChatCompletionResponse, with the gateway's id and model.",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string", "pattern": "^chatcmpl-"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "the model that answered"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {"type": "object", "required": ["role"]},
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {
            "type": "object",
            "properties": {
                k: {"type": "integer"}
                for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            },
        },
    },
}


CHAT_COMPLETION_CHUNK = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string", "pattern": "^chatcmpl-", "description": "the same in every chunk"},
        "object": {"const": "chat.completion.chunk"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "delta"]}},
    },
}

CHAT_COMPLETION_EVENT = {
    "type": "object",
    "description": "One server-sent event of a stream: a chunk, an error (the stream then "
    "ends), or `[DONE]`.",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [ref("ChatCompletionChunk"), ref("Error")]},
                },
            ]
        }
    },
}


def feedback_request_schema(settings: Settings) -> dict[str, Any]:
    fb = settings.feedback
    text = {"type": ["string", "null"]}
    passages = {
        "type": ["array", "null"],
        "maxItems": MAX_PASSAGES,
        "items": {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PASSAGE_CHARS,
                    "pattern": r"\S",
                },
                {"type": "integer", "minimum": 0},
            ]
        },
    }
    some = {"type": "array", "minItems": 1}
    return {
        "type": "object",
        "required": ["response_id"],
        "anyOf": [
            {"required": ["rating"]},
            {"required": ["relevant"], "properties": {"relevant": some}},
            {"required": ["irrelevant"], "properties": {"irrelevant": some}},
        ],
        "properties": {
            "response_id": {
                "type": "string",
                "minLength": 1,
                "description": "the `id` of a chat completion or of an embeddings response",
            },
            "rating": {
                "anyOf": [
                    {"enum": ["up", "down"]},
                    {"type": "integer", "minimum": 1, "maximum": 5},
                ],
                "description": "thumbs, or 1 to 5 stars (score (n-1)/4)",
            },
            "comment": {**text, "maxLength": fb.max_comment_chars},
            "correction": {
                **text,
                "maxLength": fb.max_correction_chars,
                "pattern": r"\S",
                "description": "the answer the user wanted",
            },
            "user": {**text, "maxLength": 256, "description": "the rater"},
            "tags": {
                "type": ["array", "null"],
                "maxItems": fb.max_tags,
                "items": {"type": "string", "minLength": 1, "maxLength": fb.max_tag_chars},
            },
            "relevant": {
                **passages,
                "description": "retrieval: the passages that helped (texts, or indices into "
                "the rated embeddings request's `input`)",
            },
            "irrelevant": {**passages, "description": "retrieval: the passages that did not"},
            "query": {
                **text,
                "maxLength": MAX_PASSAGE_CHARS,
                "pattern": r"\S",
                "description": "retrieval: the query (default: the embeddings request's first "
                "input, or the chat request's last user message)",
            },
        },
        "additionalProperties": False,
    }


def embeddings_request_schema() -> dict[str, Any]:
    tokens = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    return {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "an embedding model (never an experiment)",
            },
            "input": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_INPUTS,
                        "items": {"type": "string", "minLength": 1},
                    },
                    tokens,
                    {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": tokens},
                ],
                "description": "text(s) to embed (sent in NFC), or token ids",
            },
            "encoding_format": {"enum": ["float", "base64", None]},
            "dimensions": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "where the model supports it",
            },
            "user": {"type": ["string", "null"]},
        },
        "additionalProperties": False,
    }


EMBEDDINGS = {
    "type": "object",
    "required": ["id", "object", "model", "data"],
    "properties": {
        "id": {"type": "string", "description": "the gateway's id: rate it with /v1/feedback"},
        "object": {"const": "list"},
        "model": {"type": "string"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "object", "embedding"],
                "properties": {
                    "index": {"type": "integer"},
                    "object": {"const": "embedding"},
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string", "description": "base64 of little-endian float32"},
                        ]
                    },
                },
            },
        },
        "usage": {"type": "object"},
    },
}


RATING = {
    "type": "object",
    "required": ["id", "object", "response_id", "rater", "rating", "score"],
    "properties": {
        "id": {"type": "string", "pattern": "^fb-"},
        "object": {"const": "feedback"},
        "response_id": {"type": "string"},
        "rater": {"type": "string"},
        "rating": {"anyOf": [{"enum": ["up", "down"]}, {"type": "integer"}]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

FEEDBACK_CREATED = {
    "type": "object",
    "required": ["id", "object", "response_id", "rater", "score", "replaced"],
    "properties": {
        "id": {"type": "string", "pattern": "^fb-"},
        "object": {"const": "feedback"},
        "response_id": {"type": "string"},
        "rater": {"type": "string"},
        "score": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "description": "null: no rating given (retrieval feedback alone)",
        },
        "replaced": {"type": "boolean", "description": "an earlier rating by this rater"},
        "relevant": {"type": "integer", "description": "retrieval: passages that helped"},
        "irrelevant": {"type": "integer", "description": "retrieval: passages that did not"},
    },
}

MODEL_ENTRY = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by", "flywheel"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "flywheel": {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": ["experiment", "model"]}},
        },
    },
}


def _state() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "name", "version", "spec", "previous", "updated_by"],
        "properties": {
            "object": {"const": "experiment"},
            "name": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "spec": ref("Experiment"),
            "previous": {"anyOf": [ref("Experiment"), {"type": "null"}]},
            "updated_at": {"type": "number"},
            "updated_by": {"type": "string"},
            "ramp_from": {
                "type": "integer",
                "minimum": 1,
                "description": "first version of the current ramp: the decider's ramp steps "
                "keep it, so their evidence counts together; any other change starts a new one",
            },
            "pin": {
                "description": "set when a person changes the traffic (ramp, promote, "
                "rollback, weights): automatic decisions are paused until POST "
                "/admin/experiments/{name}/resume clears it; adding an arm keeps it as it is",
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["by", "at", "version", "action"],
                        "properties": {
                            "by": {"type": "string"},
                            "at": {"type": "number"},
                            "version": {"type": "integer"},
                            "action": {"type": "string"},
                        },
                    },
                ],
            },
        },
    }


ADMIN_MODEL = {
    "type": "object",
    "required": ["id", "object", "upstream", "model"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "source": {"enum": ["config", "registered"]},
        "upstream": {"type": "string"},
        "model": {"type": "string"},
        "adapter_path": {"type": ["string", "null"]},
    },
}


def register_schema() -> dict[str, Any]:
    spec = ModelVersion.model_json_schema(ref_template=REF)
    props = {k: v for k, v in spec["properties"].items()}
    return {
        "type": "object",
        "description": "A model version to route to (`model` defaults to `name`).",
        "required": ["name", "upstream"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX},
            **props,
            "lineage": {"type": ["object", "null"], "description": "where it came from"},
        },
        "additionalProperties": False,
    }


API_KEY_ENTRY = {
    "type": "object",
    "description": "A runtime API key: never its secret, nor the secret's digest.",
    "required": ["id", "object", "name", "role", "hint", "created_at", "created_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "api_key"},
        "name": {"type": "string"},
        "tenant": {"type": ["string", "null"], "description": "null: an admin of every tenant"},
        "role": {"enum": ["client", "reviewer", "admin"]},
        "hint": {"type": "string", "description": "the secret's last 4 characters"},
        "revoked_at": {"type": ["number", "null"]},
    },
}
NEW_API_KEY = {
    "allOf": [API_KEY_ENTRY],
    "required": ["key"],
    "properties": {"key": {"type": "string", "description": "the secret, shown only now"}},
}
TENANT = {
    "type": "object",
    "required": ["object", "tenant", "budget"],
    "properties": {
        "object": {"const": "tenant"},
        "tenant": {"type": "string"},
        "budget": {"anyOf": [ref("Budget"), {"type": "null"}]},
    },
}
AUDIT_ENTRY = {
    "type": "object",
    "required": ["at", "by", "action", "target", "before", "after"],
    "properties": {
        "at": {"type": "number"},
        "by": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": "string"},
    },
}


def key_change_schema() -> dict[str, Any]:
    """PATCH /admin/keys/{id}: any of a key's settings."""
    spec = KeySpec.model_json_schema(ref_template=REF)
    return {"type": "object", "properties": spec["properties"], "additionalProperties": False}


def key_param() -> dict[str, Any]:
    return {
        "name": "key_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the key's id (`key_...`)",
    }


def tenant_param() -> dict[str, Any]:
    return {
        "name": "tenant",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX},
    }


def name_param(description: str) -> dict[str, Any]:
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX},
    }


PUBLIC = (401, 403, 429)
ADMIN = (401, 403, 429, 503)
BODY = (400, 413, 415)


FORGOTTEN = {
    "type": "object",
    "required": ["object", "user", "tenant", "removed"],
    "properties": {
        "object": {"const": "user.forgotten"},
        "user": {"type": "string"},
        "tenant": {"type": ["string", "null"]},
        "removed": {
            "type": "object",
            "required": ["redis", "archive", "datasets"],
            "description": "counts removed per place; datasets: pending (retrain rewrites them)",
        },
    },
}


@dataclass(frozen=True)
class Operation:
    """One route of a table: method, path and handler, and its OpenAPI operation."""

    method: str
    path: str  # starlette's, convertors included: ``/admin/models/{name:path}``
    endpoint: Callable[..., Any]
    summary: str
    responses: dict[str, Any]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None  # the request body's schema (required JSON)
    description: str | None = None
    public: bool = False  # no key needed (health, metrics)

    @property
    def described_path(self) -> str:
        """The path as the document names it: ``/admin/models/{name}``."""
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.path)

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"summary": self.summary}
        if self.description:
            doc["description"] = self.description
        if self.parameters:
            doc["parameters"] = list(self.parameters)
        if self.body is not None:
            doc["requestBody"] = self.body
        doc["responses"] = self.responses
        if self.public:
            doc["security"] = []
        return doc


def mount(app: FastAPI, table: Iterable[Operation]) -> None:
    """Add a table's routes to the app, in the table's order."""
    for op in table:
        app.add_api_route(op.path, op.endpoint, methods=[op.method])


def schemas(settings: Settings) -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (Experiment, "validation"),
            (Arm, "validation"),
            (ModelVersion, "validation"),
            (KeySpec, "validation"),
            (TenantSpec, "validation"),
        ],
        ref_template=REF,
    )
    return {
        **defs["$defs"],
        "Error": ERROR,
        "ChatCompletionRequest": chat_request_schema(),
        "ChatCompletion": CHAT_COMPLETION,
        "ChatCompletionChunk": CHAT_COMPLETION_CHUNK,
        "ChatCompletionEvent": CHAT_COMPLETION_EVENT,
        "EmbeddingsRequest": embeddings_request_schema(),
        "Embeddings": EMBEDDINGS,
        "FeedbackRequest": feedback_request_schema(settings),
        "FeedbackCreated": FEEDBACK_CREATED,
        "Rating": RATING,
        "Model": MODEL_ENTRY,
        "ExperimentState": _state(),
        "AdminModel": ADMIN_MODEL,
        "RegisterModel": register_schema(),
        "ApiKey": API_KEY_ENTRY,
        "NewApiKey": NEW_API_KEY,
        "KeyChange": key_change_schema(),
        "Tenant": TENANT,
        "ArmLanguage": ARM_LANGUAGE,
    }


DESCRIPTION = """An OpenAI-compatible chat gateway with A/B experiments and ratings.

Every error is OpenAI's `{"error": {"message", "type", "param", "code"}}`. Keys are sent as
`Authorization: Bearer <key>`: client keys for `/v1`, admin keys for `/admin` (and `/v1`).
With no key configured the gateway is open (local development)."""


def describe(app: FastAPI, settings: Settings, table: Iterable[Operation]) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes
    )
    ops = {(op.method.lower(), op.described_path): op.describe() for op in table}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            extra = ops.get((method, path))
            if extra is None:
                raise ValueError(f"{method.upper()} {path} is not in a route table")
            params = {p["name"]: p for p in op.get("parameters", [])}
            params.update({p["name"]: p for p in extra.get("parameters", [])})
            op.update({k: v for k, v in extra.items() if k != "parameters"})
            if params:
                op["parameters"] = list(params.values())
    doc["components"] = {
        "schemas": schemas(settings),
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }
    doc["security"] = [{"bearer": []}]
    return doc


def install(app: FastAPI, settings: Settings, table: Iterable[Operation]) -> None:
    """Serve :func:`describe`'s document as ``/openapi.json`` (built once, on first use)."""
    table = tuple(table)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app, settings, table)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
