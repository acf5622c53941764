"""The OpenAI error shape, as every test of bad input checks it."""

from __future__ import annotations

from typing import Any

import httpx


def assert_openai_error(
    resp: httpx.Response, status: int, param: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    return dict(err)
