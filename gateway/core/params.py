"""Query parameters the console and the admin API read: a malformed one is a 400 in
OpenAI's error shape naming it, never a Redis error reported as an outage."""

from __future__ import annotations

import re
import reprlib
import time
from typing import Any

from gateway.core.config import NAME_PATTERN
from gateway.core.errors import InvalidRequest

CURSOR = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")
WORKLOAD = re.compile(NAME_PATTERN)  # a workload is named like a model
WORKLOAD_MAX = 64


def checked_cursor(before: str | None) -> str | None:
    """A page cursor (an interaction-stream id, ``ms-seq``), or a 400 naming ``before``."""
    if before is None or before == "":
        return None
    if CURSOR.fullmatch(before) is None:
        raise InvalidRequest(
            f"'before' must be a cursor this console gave (ms-seq), not {before[:40]!r}.",
            param="before",
        )
    return before


def checked_day(value: str | None, param: str, blank: bool = True) -> str | None:
    """A day filter (``YYYY-MM-DD``, from 1970 on), or a 400 naming ``param``. An empty
    value is no filter where ``blank`` (a form's empty field), else a 400 (the API)."""
    if value is None or (value == "" and blank):
        return None
    try:
        parsed = time.strptime(value, "%Y-%m-%d")
    except ValueError:
        parsed = None
    if parsed is None or not 1970 <= parsed.tm_year <= 9999:
        raise InvalidRequest(
            f"'{param}' must be a day as YYYY-MM-DD from 1970-01-01 on, not {value[:40]!r}.",
            param=param,
        )
    return value


def checked_workload(value: Any, param: str = "workload", blank: bool = True) -> str | None:
    """A workload name (as a request gives it in ``metadata.workload``, or a filter), or a
    400 naming ``param``. An empty value is no workload where ``blank``, else a 400."""
    if value is None or (value == "" and blank):
        return None
    if not isinstance(value, str) or len(value) > WORKLOAD_MAX or not WORKLOAD.fullmatch(value):
        raise InvalidRequest(
            f"'{param}' must be a workload name of at most {WORKLOAD_MAX} letters, digits, "
            f"'.', '_' or '-' (starting with a letter or digit), not {reprlib.repr(value)}.",
            param=param,
        )
    return value


def check_workload_window(
    workload: str | None, since: str | None, until: str | None, since_param: str = "since"
) -> None:
    """A report of one workload is read from the archive (the live report counts arms,
    not workloads): a workload without a window is a 400 naming ``since_param``."""
    if workload is not None and since is None and until is None:
        raise InvalidRequest(
            f"A report of one workload is read from the archive: give {since_param} "
            "(YYYY-MM-DD) too.",
            param="since",
        )
