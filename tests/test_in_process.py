"""The app in this process (Starlette's TestClient runs its lifespan): request logic that
needs no server process, against a real Redis and the instant ``fixed-*`` upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.core.config import build_settings

from .conftest import ADMIN, CLIENT
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_config
from .stores import STORES, Store, store_for

DB = 13  # this module's Redis database: what it stores stays out of the other tests' way
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, DB)


@pytest.fixture(scope="module")
def http(
    store: Store, faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir: Path = tmp_path_factory.mktemp("in-process")
    settings = build_settings(
        fixed_config(
            faulty.base_url,
            store.url,
            redis_cluster=store.cluster,
            data_dir=str(data_dir),
        )
    )
    with TestClient(create_app(settings), base_url="http://gateway") as client:
        yield client


def test_a_chat_is_answered_by_an_arm_and_its_rating_is_stored(http: TestClient) -> None:
    reply = http.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": HELLO, "user": "u-1"},
        headers=CLIENT,
    )
    assert reply.status_code == 200, reply.text
    arm = reply.headers["x-flywheel-arm"]
    assert reply.json()["choices"][0]["message"]["content"] == f"answer from {arm}"
    rated = http.post(
        "/v1/feedback", json={"response_id": reply.json()["id"], "rating": "up"}, headers=CLIENT
    )
    assert rated.status_code == 201, rated.text


def test_models_lists_the_experiment_and_its_models(http: TestClient) -> None:
    listed = http.get("/v1/models", headers=CLIENT)
    assert listed.status_code == 200
    ids = {m["id"] for m in listed.json()["data"]}
    assert {"default", "fixed-a", "fixed-b", "fixed-c"} <= ids


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "default"}, "messages"),
        ({"model": "default", "messages": HELLO, "temperature": 9}, "temperature"),
        ({"model": "no-such-model", "messages": HELLO}, "model"),
    ],
)
def test_bad_requests_name_the_parameter_in_openais_error_shape(
    http: TestClient, body: dict[str, object], param: str
) -> None:
    reply = http.post("/v1/chat/completions", json=body, headers=CLIENT)
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and param in error["message"]


def test_an_admin_route_refuses_a_client_key(http: TestClient) -> None:
    assert http.get("/admin/experiments", headers=CLIENT).status_code == 403
    assert http.get("/admin/experiments", headers=ADMIN).status_code == 200
    missing = http.get("/admin/experiments")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_every_route_is_declared_in_a_table_beside_its_description(http: TestClient) -> None:
    """``/openapi.json`` describes each route from its table entry: a summary, what it
    answers, and (unless it needs no key) its errors in OpenAI's shape."""
    from gateway.admin import admin
    from gateway.serving import routes

    doc = http.get("/openapi.json").json()
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    tables = {(op.method, op.described_path) for op in (*routes.ROUTES, *admin.ROUTES)}
    assert described == tables
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"] and any(code.startswith("2") for code in op["responses"])
            if op.get("security") != []:
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (method, path)


def test_a_route_outside_the_tables_is_refused_by_the_description() -> None:
    """A route added without a table entry has no description: the document is not
    served half-true."""
    app = create_app(build_settings(fixed_config("http://127.0.0.1:9", "redis://127.0.0.1:9")))

    @app.get("/v1/undescribed")
    async def undescribed() -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match="GET /v1/undescribed is not in a route table"):
        app.openapi()
