"""The interaction record the gateway's log writer wrote for a response."""

from __future__ import annotations

from typing import Any

from gateway.core.records import InteractionRecord
from retrain import feedback_log

from ..polling import eventually


def stored(r: Any, response_id: str) -> InteractionRecord:
    """The record of ``response_id`` in Redis (``r``: a client of one Redis or of the
    cluster); the writer writes in batches, so it waits up to 5 s for it."""
    rec = eventually(
        lambda: feedback_log.interaction(r, response_id),
        f"no interaction record for {response_id}",
        timeout_s=5,
        every_s=0.02,
    )
    assert rec is not None  # eventually returns only what is truthy
    return rec
