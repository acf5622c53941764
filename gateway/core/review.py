"""The review queue's items: failures without a correction, corrected by people.

``retrain build`` queues each poorly rated answer that has no correction in
``fw:review:{experiment}`` (response id → item JSON, ``"correction": null``). People
correct items through ``retrain review import`` or the console; both store the
correction with :func:`corrected`, so the next build reads the same thing whichever
path it came by. An item marked "not a failure" stays in the hash with ``dismissed``
set (so a build that reads its rating again does not queue it anew) and is shown to no
one: not by the console, not by ``retrain review export``.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from gateway.core import keys
from gateway.core.documents import ReviewItem

MAX_CORRECTION_CHARS = 32_000


class BadCorrection(ValueError):
    """A correction that cannot be stored; ``str()`` says why."""


def corrected(item: ReviewItem, correction: Any) -> ReviewItem:
    """The item with ``correction`` set: a non-empty string of bounded length."""
    if not isinstance(correction, str) or not correction.strip():
        raise BadCorrection("'correction' must be a non-empty string or null")
    if len(correction) > MAX_CORRECTION_CHARS:
        raise BadCorrection(f"'correction' is longer than {MAX_CORRECTION_CHARS} characters")
    return {**item, "correction": correction}


async def items(redis: aioredis.Redis, ks: keys.Keyspace, experiment: str) -> dict[str, ReviewItem]:
    """Every item of an experiment's queue, by response id, in response id order."""
    raw = await redis.hgetall(ks.review(experiment))
    return {keys.text(k): orjson.loads(v) for k, v in sorted(raw.items())}


async def item(
    redis: aioredis.Redis, ks: keys.Keyspace, experiment: str, response_id: str
) -> ReviewItem | None:
    return cast(
        "ReviewItem | None", keys.decode(await redis.hget(ks.review(experiment), response_id))
    )


async def correct(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    experiment: str,
    response_id: str,
    correction: str,
    who: str,
) -> ReviewItem | None:
    """Store a correction; None when the item is no longer queued (a build used it)."""
    found = await item(redis, ks, experiment, response_id)
    if found is None:
        return None
    doc = corrected(found, correction)
    doc["reviewed_by"] = who
    await redis.hset(ks.review(experiment), response_id, orjson.dumps(doc))
    return doc


def pending(item: ReviewItem) -> bool:
    """Still waiting for a person: neither corrected nor dismissed."""
    return not item.get("correction") and not item.get("dismissed")


async def dismiss(
    redis: aioredis.Redis, ks: keys.Keyspace, experiment: str, response_id: str, who: str
) -> ReviewItem | None:
    """ "Not a failure": nothing is trained on it. None: it was not queued."""
    found = await item(redis, ks, experiment, response_id)
    if found is None:
        return None
    doc: ReviewItem = {**found, "correction": None, "dismissed": True, "reviewed_by": who}
    await redis.hset(ks.review(experiment), response_id, orjson.dumps(doc))
    return doc
