"""Trim OpenAI's OpenAPI description to the schemas Flywheel's tests check against.

    python tests/data/openai-openapi/trim.py PATH/TO/openapi.yaml

keeps, from ``components/schemas``, the named schemas below and every schema they refer
to (``$ref``, transitively), unchanged, and writes ``schemas.json`` beside this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = [
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "OpenAIFile",
    "FineTuningJob",
    "ListFineTuningJobEventsResponse",
    "ListFineTuningJobCheckpointsResponse",
    "ListPaginatedFineTuningJobsResponse",
]
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        ref = str(node.get("$ref", ""))
        found = {ref[len(PREFIX) :]} if ref.startswith(PREFIX) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def main(source: str) -> None:
    with open(source, "rb") as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = doc["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += sorted(refs(schemas[name]) - keep)
    out = {
        "openapi": doc["openapi"],
        "info": {**doc["info"], "x-trimmed": f"{', '.join(ROOTS)} and what they refer to"},
        "components": {"schemas": {name: schemas[name] for name in sorted(keep)}},
    }
    target = Path(__file__).with_name("schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{target}: {len(keep)} of {len(schemas)} schemas")


if __name__ == "__main__":
    main(sys.argv[1])
