"""Bad input, by hand: each is refused with a 4xx in OpenAI's error shape naming the problem,
before any upstream call, and the gateway goes on serving.

A real gateway in front of the instant ``fixed-*`` upstream, which counts the requests it
gets: a refused request must not have reached it (the gateway refuses what OpenAI's schema
rules out itself, rather than spending an upstream call to learn it). The cases that
tests/test_errors.py and tests/test_feedback.py already cover are not repeated here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.console import data
from gateway.core import paths

from .conftest import ADMIN, CLIENT
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_gateway
from .helpers.errors import assert_openai_error
from .services import GatewayProcess, RedisProcess

JSON = {"Content-Type": "application/json"}
HELLO = [{"role": "user", "content": "hi"}]
TEN_MB = 10 * 1024 * 1024
BAD_INPUT_DB = 8


@pytest.fixture(scope="module")
def fixed(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, FaultyUpstream]]:
    with fixed_gateway(redis_server, tmp_path_factory.mktemp("bad-input"), BAD_INPUT_DB) as pair:
        yield pair


@pytest.fixture
def gw(fixed: tuple[GatewayProcess, FaultyUpstream]) -> Iterator[GatewayProcess]:
    """The gateway; afterwards it still answers, and nothing refused reached the upstream."""
    gateway, upstream = fixed
    before = upstream.requests
    yield gateway
    assert upstream.requests == before, "a refused request reached the upstream"
    ok = httpx.post(
        gateway.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "default", "messages": HELLO},
    )
    assert ok.status_code == 200, ok.text
    assert gateway.proc is not None and gateway.proc.poll() is None


def chat(
    gw: GatewayProcess, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        content=content,
        headers={**CLIENT, **JSON, **(headers or {})},
        timeout=30,
    )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- chat completions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b'{"model": "default", "messages": []} trailing', "not valid JSON"),
        (b'{"model": "default", "temperature": NaN}', "not valid JSON"),
        (b'{"model": "default", "seed": 1e999}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b"null", "JSON object"),
    ],
    ids=["empty", "truncated", "trailing", "nan", "infinity", "array", "string", "null"],
)
def test_chat_body_that_is_not_a_json_object_is_400(
    gw: GatewayProcess, body: bytes, says: str
) -> None:
    err = assert_openai_error(chat(gw, body), 400)
    assert says in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"model": "default", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
        (b'{"model": "default\xc3", "messages": []}', "UTF-8"),
        (
            b'{"model": "default", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "surrogate",
        ),
    ],
    ids=["invalid-bytes", "truncated-sequence", "lone-surrogate"],
)
def test_invalid_utf8_is_400(gw: GatewayProcess, body: bytes, says: str) -> None:
    err = assert_openai_error(chat(gw, body), 400)
    assert says in err["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",  # curl -d without -H
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
    ],
)
def test_a_body_that_is_not_declared_json_is_415(gw: GatewayProcess, content_type: str) -> None:
    body = b'{"model": "default", "messages": [{"role": "user", "content": "hi"}]}'
    resp = chat(gw, body, {"Content-Type": content_type})
    err = assert_openai_error(resp, 415, param="content-type")
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types_are_accepted(
    fixed: tuple[GatewayProcess, FaultyUpstream], content_type: str
) -> None:
    gateway, _ = fixed
    body = b'{"model": "default", "messages": [{"role": "user", "content": "hi"}]}'
    assert chat(gateway, body, {"Content-Type": content_type}).status_code == 200


def test_no_content_type_is_read_as_json(fixed: tuple[GatewayProcess, FaultyUpstream]) -> None:
    gateway, _ = fixed
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        content=b'{"model": "default", "messages": [{"role": "user", "content": "hi"}]}',
        headers=CLIENT,
    )
    assert "content-type" not in resp.request.headers
    assert resp.status_code == 200, resp.text


def test_10_mb_body_is_413_declared_or_streamed(gw: GatewayProcess) -> None:
    body = b'{"model": "default", "messages": [{"role": "user", "content": "' + b"x" * TEN_MB
    body += b'"}]}'
    err = assert_openai_error(chat(gw, body), 413)
    assert err["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    resp = httpx.post(
        gw.base_url + "/chat/completions", content=chunks(), headers={**CLIENT, **JSON}, timeout=30
    )
    assert "content-length" not in resp.request.headers
    assert_openai_error(resp, 413)


@pytest.mark.parametrize("depth", [1_100, 100_000])
def test_deeply_nested_json_is_400(gw: GatewayProcess, depth: int) -> None:
    body = b'{"model": "default", "messages": ' + nested(depth) + b"}"
    err = assert_openai_error(chat(gw, body), 400)
    assert "depth limit" in err["message"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ({"role": "user", "content": "hi"}, "messages"),
        (None, "messages"),
        (42, "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([[{"role": "user", "content": "hi"}]], "messages[0]"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([{"role": "USER", "content": "hi"}], "messages[0].role"),
        ([{"role": 1, "content": "hi"}], "messages[0].role"),
        ([{"role": {}, "content": "hi"}], "messages[0].role"),  # unhashable: was a 500
        ([{"role": ["user"], "content": None}], "messages[0].role"),
        ([*HELLO, {"role": "narrator", "content": "hi"}], "messages[1].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "system", "content": {"text": "hi"}}], "messages[0].content"),
        ([{"role": "user", "content": "hi", "name": 7}], "messages[0].name"),
    ],
)
def test_malformed_messages_are_400_naming_the_message(
    gw: GatewayProcess, messages: Any, param: str
) -> None:
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "default", "messages": messages},
    )
    assert_openai_error(resp, 400, param=param)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None},
        {"role": "assistant"},
        {"role": "function", "name": "lookup", "content": None},  # OpenAI's schema allows it
    ],
)
def test_an_assistant_or_function_message_may_have_null_content(
    fixed: tuple[GatewayProcess, FaultyUpstream], message: dict[str, Any]
) -> None:
    gateway, _ = fixed
    messages = [*HELLO, message, {"role": "user", "content": "?"}]
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "default", "messages": messages},
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", "16"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("max_completion_tokens", -5),
        ("n", 0),
        ("n", 129),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("top_p", 1.01),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
        ("top_logprobs", 21),
        ("logprobs", "yes"),
        ("seed", "42"),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [1]),
        ("stop", []),
        ("stream", "yes"),
        ("stream", 1),
        ("stream_options", "usage"),
        ("user", 42),
        ("user", None),
    ],
)
def test_out_of_range_parameters_are_400_naming_the_parameter(
    gw: GatewayProcess, field: str, value: Any
) -> None:
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "default", "messages": HELLO, field: value},
    )
    err = assert_openai_error(resp, 400, param=field)
    assert field in err["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 16, "temperature": 0, "top_p": 1, "n": 1},
        {"max_tokens": None, "temperature": None, "stream": None, "stop": None, "seed": None},
        {"max_completion_tokens": 8, "presence_penalty": -2, "frequency_penalty": 2},
        {"stop": "\n", "logprobs": True, "top_logprobs": 0, "seed": -1, "max_tokens": 16.0},
        {"stop": ["a", "b", "c", "d"], "stream_options": None, "user": "u-1"},
        {"tools": "not checked here: the upstream judges it", "x-vendor-field": 1},
    ],
)
def test_valid_parameters_pass(
    fixed: tuple[GatewayProcess, FaultyUpstream], params: dict[str, Any]
) -> None:
    gateway, _ = fixed
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "default", "messages": HELLO, **params},
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("model", ["", None, 42, ["default"], {"name": "default"}])
def test_model_of_the_wrong_type_is_400(gw: GatewayProcess, model: Any) -> None:
    resp = httpx.post(
        gw.base_url + "/chat/completions", headers=CLIENT, json={"model": model, "messages": HELLO}
    )
    assert_openai_error(resp, 400, param="model")


def test_a_10_kb_model_name_is_400_and_not_echoed_whole(gw: GatewayProcess) -> None:
    model = "m" * 10_240
    resp = httpx.post(
        gw.base_url + "/chat/completions", headers=CLIENT, json={"model": model, "messages": HELLO}
    )
    err = assert_openai_error(resp, 400, param="model")
    assert err["code"] == "model_not_found" and len(resp.content) < 1024


LONG = "k" * 100_000


@pytest.mark.parametrize(
    ("path", "method", "body", "param"),
    [
        (
            "/v1/chat/completions",
            "POST",
            {"model": "default", "messages": HELLO, "max_tokens": LONG},
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            "POST",
            {"model": "default", "messages": [{"role": LONG, "content": "hi"}]},
            "messages[0].role",
        ),
        ("/v1/feedback", "POST", {"response_id": "x", "rating": LONG}, "rating"),
        ("/v1/feedback", "POST", {"response_id": "x", "rating": "up", LONG: 1}, LONG[:64]),
        ("/admin/experiments/long", "PUT", {"arms": [{"model": LONG}]}, "arms[0].model"),
        ("/admin/experiments/long", "PUT", {"arms": [{"model": "fixed-a"}], LONG: 1}, None),
        ("/admin/models", "POST", {"name": "m", "upstream": LONG}, "upstream"),
    ],
    ids=["chat-param", "chat-role", "rating", "feedback-key", "arm-model", "spec-key", "upstream"],
)
def test_errors_quote_what_was_sent_only_in_part(
    gw: GatewayProcess, path: str, method: str, body: dict[str, Any], param: str | None
) -> None:
    resp = httpx.request(method, gw.url + path, headers=ADMIN, json=body)
    assert_openai_error(resp, 400, param=param)
    assert len(resp.content) < 1024, resp.text[:200]


# -- ratings -------------------------------------------------------------------------------


def feedback(gw: GatewayProcess, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/feedback",
        content=content,
        headers={**CLIENT, **JSON, **headers},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "empty"),
        (b'{"response_id": "x", "rating": "up"', 400, "not valid JSON"),
        (b'{"response_id": "\xff", "rating": "up"}', 400, "UTF-8"),
        (b'["up"]', 400, "JSON object"),
        (b'{"response_id": "x", "rating": ' + nested(100_000) + b"}", 400, "depth limit"),
        (b'{"response_id": "x", "rating": "' + b"x" * TEN_MB + b'"}', 413, "exceeds"),
    ],
    ids=["empty", "truncated", "invalid-utf8", "array", "nested", "10-mb"],
)
def test_bad_feedback_bodies_are_refused(
    gw: GatewayProcess, body: bytes, status: int, says: str
) -> None:
    err = assert_openai_error(feedback(gw, body), status)
    assert says in err["message"]


def test_feedback_that_is_not_json_is_415(gw: GatewayProcess) -> None:
    resp = feedback(
        gw, b"response_id=x&rating=up", **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_openai_error(resp, 415, param="content-type")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_id": 42}, "response_id"),
        ({"response_id": ""}, "response_id"),
        ({"tags": 0}, "tags"),
        ({"tags": False}, "tags"),
        ({"tags": {}}, "tags"),
        ({"tags": [""]}, "tags"),
        ({"tags": ["x" * 65]}, "tags"),
        ({"comment": 42}, "comment"),
        ({"user": ["u"]}, "user"),
        ({"user": "u" * 257}, "user"),
        ({"correction": False}, "correction"),
        ({"rating": None}, "rating"),
        ({"rating": "UP"}, "rating"),
        ({"rating": [5]}, "rating"),
    ],
)
def test_bad_feedback_fields_are_400_naming_the_field(
    gw: GatewayProcess, fields: dict[str, Any], param: str
) -> None:
    body = {"response_id": "chatcmpl-x", "rating": "up", **fields}
    resp = httpx.post(gw.base_url + "/feedback", headers=CLIENT, json=body)
    assert_openai_error(resp, 400, param=param)


# -- admin ---------------------------------------------------------------------------------


def put(gw: GatewayProcess, name: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.put(
        f"{gw.url}/admin/experiments/{name}",
        content=content,
        headers={**ADMIN, **JSON, **headers},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "empty"),
        (b'{"arms": [', 400, "not valid JSON"),
        (b'{"arms": [{"model": "fixed-\xff"}]}', 400, "UTF-8"),
        (b'[{"model": "fixed-a"}]', 400, "JSON object"),
        (b'{"arms": ' + nested(100_000) + b"}", 400, "depth limit"),
        (b'{"arms": [{"model": "' + b"x" * TEN_MB + b'"}]}', 413, "exceeds"),
    ],
    ids=["empty", "truncated", "invalid-utf8", "array", "nested", "10-mb"],
)
def test_bad_admin_bodies_are_refused(
    gw: GatewayProcess, body: bytes, status: int, says: str
) -> None:
    err = assert_openai_error(put(gw, "bad-bodies", body), status)
    assert says in err["message"]
    assert httpx.get(f"{gw.url}/admin/experiments/bad-bodies", headers=ADMIN).status_code == 404


def test_admin_body_that_is_not_json_is_415(gw: GatewayProcess) -> None:
    resp = put(gw, "form", b"arms=fixed-a", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert_openai_error(resp, 415, param="content-type")
    resp = httpx.post(
        f"{gw.url}/admin/models",
        content=b"<model/>",
        headers={**ADMIN, "Content-Type": "application/xml"},
    )
    assert_openai_error(resp, 415, param="content-type")


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"arms": "fixed-a"}, "arms"),
        ({"arms": []}, "arms"),
        ({"arms": [{"model": "fixed-a", "weight": "ninety"}]}, "arms[0].weight"),
        ({"arms": [{"model": "fixed-a", "weight": "90"}]}, "arms[0].weight"),  # no coercion
        ({"arms": [{"model": "fixed-a", "weight": True}]}, "arms[0].weight"),
        ({"arms": [{"model": "fixed-a"}], "auto_promote": "yes"}, "auto_promote"),
        (
            {"arms": [{"model": "fixed-a"}], "decision": {"max_error_rate_increase": False}},
            "decision.max_error_rate_increase",
        ),
        ({"arms": [{"model": "fixed-a", "weight": 1e9}]}, "arms[0].weight"),
        (
            {"arms": [{"model": "fixed-a", "weight": 1e6}, {"model": "fixed-b", "weight": 1e300}]},
            "arms[1].weight",
        ),
        ({"arms": [{"model": 7}]}, "arms[0].model"),
        (
            {"arms": [{"model": "fixed-a"}], "shadow": {"model": "fixed-b", "share": 2}},
            "shadow.share",
        ),
        ({"arms": [{"model": "fixed-a"}], "decision": {"alpha": 1}}, "decision.alpha"),
        ({"arms": [{"model": "fixed-a"}], "control": "fixed-b"}, "control"),
    ],
)
def test_bad_experiment_specs_are_400_naming_the_key(
    gw: GatewayProcess, spec: dict[str, Any], param: str
) -> None:
    resp = httpx.put(f"{gw.url}/admin/experiments/bad-spec", headers=ADMIN, json=spec)
    assert_openai_error(resp, 400, param=param)


def test_huge_weights_that_would_overflow_are_refused_and_routing_goes_on(
    gw: GatewayProcess,
) -> None:
    """Two weights of 1e308 summed to infinity, and the routing table could not be built."""
    spec = {"arms": [{"model": "fixed-a", "weight": 1e308}, {"model": "fixed-b", "weight": 1e308}]}
    resp = httpx.put(f"{gw.url}/admin/experiments/overflow", headers=ADMIN, json=spec)
    assert_openai_error(resp, 400, param="arms[0].weight")


@pytest.mark.parametrize("name", ["-starts-with-dash", "has space", "colon:name", "x" * 129, "é"])
def test_invalid_experiment_names_are_400(gw: GatewayProcess, name: str) -> None:
    resp = httpx.put(
        f"{gw.url}/admin/experiments/{name}", headers=ADMIN, json={"arms": [{"model": "fixed-a"}]}
    )
    assert_openai_error(resp, 400, param="name")


PATHLIKE = ["team/support", "acme-exp/../../../pwn", "a..b", "..", "tab\tname", "nul\x00"]


@pytest.mark.parametrize("name", PATHLIKE)
def test_a_name_that_could_become_a_path_is_refused_by_every_admin_route(
    fixed: tuple[GatewayProcess, FaultyUpstream], name: str
) -> None:
    """One strict pattern for experiments, models, keys and tenants: no ``/``, no ``..``,
    no control characters (the path is percent-encoded, as a client sends such a name)."""
    gateway, _ = fixed
    quoted = quote(name, safe="")
    spec = {"arms": [{"model": "fixed-a", "weight": 1}]}
    put = httpx.put(f"{gateway.url}/admin/experiments/{quoted}", headers=ADMIN, json=spec)
    assert_openai_error(put, 404 if name == ".." else 400)  # "..": the path has no name
    model = {"name": name, "upstream": "fixed", "model": "fixed-a"}
    assert_openai_error(httpx.post(f"{gateway.url}/admin/models", headers=ADMIN, json=model), 400)
    for body in ({"name": name}, {"name": "fine", "tenant": name}):
        made = httpx.post(f"{gateway.url}/admin/keys", headers=ADMIN, json=body)
        assert made.status_code == 400 and made.json()["error"]["type"] == "invalid_request_error"
    tenant = httpx.put(
        f"{gateway.url}/admin/tenants/{quoted}", headers=ADMIN, json={"budget": None}
    )
    assert tenant.status_code in (400, 404) and set(tenant.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    names = {
        e["name"]
        for e in httpx.get(f"{gateway.url}/admin/experiments", headers=ADMIN).json()["data"]
    }
    assert name not in names
    assert all("/" not in n and ".." not in n for n in names)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/experiments/default/report?since=abc", "since"),
        ("/admin/experiments/default/report?since=0001-01-01", "since"),
        ("/admin/experiments/default/report?since=2026-01-01&until=2026-13-01", "until"),
        ("/ui/interactions?before=abc", "before"),
        ("/ui/interactions?before=1-2-3", "before"),
        ("/ui/interactions?since=0001-01-01", "since"),
        ("/ui/interactions?until=yesterday", "until"),
        ("/ui/experiments/default?since=0001-01-01", "since"),
        ("/admin/experiments/default/report?since=2026-01-01&workload=a%20b", "workload"),
        ("/admin/experiments/default/report?workload=refunds", "since"),
        ("/ui/interactions?workload=-x", "workload"),
        ("/ui/experiments/default?since=2026-01-01&workload=ค่าส่ง", "workload"),
    ],
)
def test_malformed_cursors_and_dates_are_400_naming_the_parameter(
    gw: GatewayProcess, path: str, param: str
) -> None:
    assert_openai_error(httpx.get(gw.url + path, headers=ADMIN, timeout=30), 400, param=param)


def test_promote_refuses_unknown_fields(gw: GatewayProcess) -> None:
    url = f"{gw.url}/admin/experiments/default"
    before = httpx.get(url, headers=ADMIN).json()
    r = httpx.post(url + "/promote", headers=ADMIN, json={"model": "fixed-b", "force": True})
    assert_openai_error(r, 400, param="force")
    assert httpx.get(url, headers=ADMIN).json()["version"] == before["version"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/experiments/default/arms", {"weight": 1}, "model"),
        ("/admin/experiments/default/arms", {"model": "fixed-c", "weight": -1}, "arms[2].weight"),
        ("/admin/experiments/default/promote", {"model": 5}, "model"),
        ("/admin/experiments/default/promote", {"model": "fixed-c"}, "model"),
        ("/admin/models", {"name": "m", "upstream": 5}, "upstream"),
        ("/admin/models", {"name": "m", "upstream": "nowhere"}, "upstream"),
        ("/admin/models", {"name": "no spaces", "upstream": "fixed"}, "name"),
        ("/admin/models", {"name": "m", "upstream": "fixed", "lineage": "x"}, "lineage"),
        ("/admin/models", {"name": "m", "upstream": "fixed", "colour": "red"}, "colour"),
    ],
)
def test_bad_admin_posts_are_400_naming_the_field(
    gw: GatewayProcess, path: str, body: dict[str, Any], param: str
) -> None:
    resp = httpx.post(gw.url + path, headers=ADMIN, json=body)
    assert_openai_error(resp, 400, param=param)


def test_wrong_method_and_unknown_path_are_openai_errors(gw: GatewayProcess) -> None:
    resp = httpx.get(gw.base_url + "/chat/completions", headers=CLIENT)
    err = assert_openai_error(resp, 405)
    assert err["type"] == "invalid_request_error" and resp.headers["allow"] == "POST"
    assert_openai_error(httpx.post(gw.base_url + "/nothing-here", headers=CLIENT, json={}), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/admin/experiments/default", "GET, PUT"),  # every method of the path
        ("PUT", "/admin/experiments/default/history", "GET"),  # not experiment 'default/history'
        ("GET", "/admin/experiments/default/arms", "POST"),
        ("PUT", "/admin/experiments/team/x/promote", "POST"),
        ("DELETE", "/admin/models", "GET, POST"),
        ("POST", "/admin/models/fixed-a", "DELETE, GET"),
    ],
)
def test_an_unsupported_method_is_405_naming_the_allowed_ones(
    gw: GatewayProcess, method: str, path: str, allow: str
) -> None:
    resp = httpx.request(method, gw.url + path, headers=ADMIN, json={"arms": [{"model": "x"}]})
    err = assert_openai_error(resp, 405)
    assert resp.headers["allow"] == allow and err["code"] == "method_not_allowed"
    assert resp.headers.get_list("allow") == [allow]


@pytest.mark.parametrize("command", ["build", "run"])
@pytest.mark.parametrize("name", ["acme-exp/../../../pwn", "team/support", ".."])
def test_retrain_refuses_an_experiment_name_that_could_leave_the_dataset_dir(
    command: str, name: str, tmp_path: Path
) -> None:
    """Refused before anything is read or written (exit 2, as argparse does)."""
    out = tmp_path / "datasets"
    args = [sys.executable, "-m", "retrain", command, "--experiment", name]
    if command == "build":
        args += ["--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "--experiment" in done.stderr and "not a valid name" in done.stderr
    assert list(tmp_path.rglob("*")) == []


def test_every_path_from_a_name_stays_under_its_root(tmp_path: Path) -> None:
    """The one join (``gateway.core.paths.under``) refuses to leave the root, and the
    console's dataset list skips a name stored before names were strict (no 500)."""
    root = tmp_path / "datasets"
    (root / "good" / "v1").mkdir(parents=True)
    (root / "good" / "v1" / "manifest.json").write_text('{"id": "v1", "counts": {}}')
    (tmp_path / "pwn").mkdir()
    (root / "link").symlink_to(tmp_path / "pwn")
    assert paths.under(root, "good", "v1") == root / "good" / "v1"
    for bad in ("..", "../pwn", "a/b", "", "tab\tname", "link"):
        with pytest.raises(paths.UnsafePath) as refused:
            paths.under(root, bad, param="experiment")
        assert refused.value.status == 400 and refused.value.param == "experiment"
    listed = data.datasets(root, ["good", "acme-exp/../../../pwn", "..", "team/support"])
    assert [d["id"] for d in listed] == ["v1"]
