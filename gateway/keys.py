"""Every Redis key name Flywheel uses, and how values are encoded. Nothing else names keys.

Shared by the gateway (writer) and ``retrain`` (reader). Values are orjson-encoded
JSON documents unless noted.

==========================  ======  =================================================
key                         type    content
==========================  ======  =================================================
``fw:ix:{response_id}``     string  one interaction record (JSON), expires after the
                                    configured retention
``fw:ix:stream``            stream  one entry per interaction (``id``, ``experiment``,
                                    ``arm``), in time order, trimmed by retention
==========================  ======  =================================================
"""

from __future__ import annotations

from typing import Any

import orjson

PREFIX = "fw:"
INTERACTION_STREAM = PREFIX + "ix:stream"


def interaction(response_id: str) -> str:
    return f"{PREFIX}ix:{response_id}"


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def decode(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    doc = orjson.loads(raw)
    assert isinstance(doc, dict)
    return doc
