"""Wait for what a test expects to become true, instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T], what: str, timeout_s: float = 10.0, every_s: float = 0.05
) -> T:
    """Call ``check`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} (waited {timeout_s:g} s)"
        time.sleep(every_s)
