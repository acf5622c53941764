"""Fault injection for the crash tests: ``FLYWHEEL_RETRAIN_CRASH_AT=<stage>`` makes the
process die at that stage as if killed (no cleanup, no acknowledgement).

Stages: ``after-collect`` and ``after-write`` (``retrain build``), ``after-stage``,
``training``, ``checkpoint`` and ``remote-training`` (``retrain run``; the last once its
OpenAI job is launched), ``forget-after-successor``
(``retrain forget``: a successor version written, the old ones not yet removed).
"""

from __future__ import annotations

import os

CRASH_ENV = "FLYWHEEL_RETRAIN_CRASH_AT"


def crash_point(stage: str) -> None:
    """Die here, as if killed, when ``FLYWHEEL_RETRAIN_CRASH_AT`` names this stage."""
    if os.environ.get(CRASH_ENV) == stage:
        os._exit(137)
