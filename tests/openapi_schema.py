"""OpenAI's API description as JSON-schema validators, for tests that check shapes.

The fixture ``check_schema(name, body)`` asserts ``body`` is a
``#/components/schemas/<name>`` of OpenAI's OpenAPI description (openai/openai-openapi),
trimmed to the schemas the tests use in ``tests/data/openai-openapi/schemas.json``
(``FLYWHEEL_OPENAI_OPENAPI`` names another copy, YAML or JSON, e.g. the full file).

The schemas are used as published, with OpenAPI 3.0's ``nullable`` and boolean
exclusive bounds translated to JSON schema (see :func:`or_null`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

SPEC = Path(__file__).resolve().parent / "data" / "openai-openapi" / "schemas.json"
SPEC_URI = "urn:openai-openapi"
DATA_KEYWORDS = {"default", "enum", "const", "example", "examples"}  # values, not schemas
NAMED_SCHEMAS = {"properties", "patternProperties", "$defs", "definitions"}  # name -> schema

Check = Callable[[str, Any], None]


def or_null(schema: Any) -> Any:
    """A schema with OpenAPI 3.0's ``nullable: true`` as JSON schema: the same, or null.

    3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum`` (a flag on ``minimum``/
    ``maximum``) become 2020-12's numeric bounds, or read as "above 1" they would reject
    OpenAI's own values (a ``learning_rate_multiplier`` of 0.5, say).
    """
    if isinstance(schema, list):  # allOf, anyOf, oneOf, prefixItems
        return [or_null(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: or_null(s) for name, s in value.items()}
        elif key in DATA_KEYWORDS or key.startswith("x-"):
            out[key] = value
        elif key != "nullable" or not isinstance(value, bool):
            out[key] = or_null(value)
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(flag), bool):
            if out.pop(flag) and bound in out:
                out[flag] = out.pop(bound)
    return {"anyOf": [out, {"type": "null"}]} if schema.get("nullable") is True else out


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The OpenAPI document, its ``components/schemas`` made plain JSON schema."""
    path = Path(os.environ.get("FLYWHEEL_OPENAI_OPENAPI") or SPEC)
    if not path.is_file():
        pytest.fail(f"OpenAI's OpenAPI description is not at {path}", pytrace=False)
    with path.open("rb") as f:  # YAML is a superset of JSON
        doc: dict[str, Any] = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not str(doc.get("openapi")).startswith(("3.0.", "3.1.")):
        pytest.fail(f"{path}: unsupported OpenAPI version {doc.get('openapi')!r}", pytrace=False)
    schemas = doc["components"]["schemas"]
    doc["components"]["schemas"] = {name: or_null(s) for name, s in schemas.items()}
    return doc


@pytest.fixture(scope="module")
def check_schema(openapi: dict[str, Any]) -> Check:
    """``check_schema(name, body)`` asserts ``body`` is a ``#/components/schemas/<name>``."""
    if openapi["openapi"].startswith("3.1."):
        validator_class, dialect = Draft202012Validator, DRAFT202012
    else:  # 3.0's schema object is draft-4/5 JSON schema
        validator_class, dialect = Draft4Validator, DRAFT4
    resource = Resource.from_contents(openapi, default_specification=dialect)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)

    def check(name: str, body: Any) -> None:
        assert name in openapi["components"]["schemas"], f"no schema {name!r}"
        ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
        # best_match looks into anyOf/oneOf for the branch that came nearest, and why it failed
        validator = validator_class(ref, registry=registry)
        errors = [best_match([e]) for e in validator.iter_errors(body)]
        assert not errors, f"{name} violated:\n" + "\n".join(
            f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            f" (schema: {'/'.join(map(str, e.absolute_schema_path))})"
            for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
        )

    return check
