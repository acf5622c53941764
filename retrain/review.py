"""The review queue: failures without a correction, out to people and back.

``retrain build`` queues each poorly rated answer that has no correction (and no
teacher answered) in ``fw:review:<experiment>``. ``retrain review export`` writes them as
JSON lines with ``"correction": null``; people fill in the corrections; ``retrain review
import`` stores them, and the next build turns each corrected item into examples
(``source: review``) and takes it off the queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys
from gateway.core.review import BadCorrection, corrected

from .errors import RetrainError


def export_review(client: redis.Redis, ks: keys.Keyspace, experiment: str, out: Path) -> int:
    raw_items = client.hgetall(ks.review(experiment))
    items = [orjson.loads(raw) for _, raw in sorted(raw_items.items())]
    items = [i for i in items if not i.get("dismissed")]  # "not a failure" (the console)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        for item in items:
            f.write(orjson.dumps(item) + b"\n")
    tmp.replace(out)
    return len(items)


class ReviewError(RetrainError):
    """An import file, or a line of it, that cannot be used; ``str()`` names the line.
    Nothing was stored (exit 1)."""


def import_review(client: redis.Redis, ks: keys.Keyspace, experiment: str, path: Path) -> int:
    """Store the corrections of a reviewed file; lines without one are left as they are.

    The whole file is checked before anything is stored, so a bad line changes nothing.
    """
    updates: dict[str, bytes] = {}
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row: Any = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReviewError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get("response_id"), str):
                raise ReviewError(f"{path}:{n}: each line needs a 'response_id'")
            fix = row.get("correction")
            if fix is None:
                continue
            raw = client.hget(ks.review(experiment), row["response_id"])
            if raw is None:
                raise ReviewError(
                    f"{path}:{n}: {row['response_id']} is not in the review queue of '{experiment}'"
                )
            try:
                item = corrected(orjson.loads(raw), fix)
            except BadCorrection as exc:
                raise ReviewError(f"{path}:{n}: {exc}") from None
            updates[row["response_id"]] = orjson.dumps(item)
    if updates:
        client.hset(ks.review(experiment), mapping=updates)  # type: ignore[arg-type]
    return len(updates)
