"""Fuzzing the gateway's own OpenAPI description (schemathesis) against a real gateway.

A gateway process of its own, whose every model is an instant ``fixed-*`` answer of the
fault server (no vLLM: thousands of requests in seconds), on a Redis database of its
own (the fuzzer creates experiments and models). Every operation of ``/openapi.json``,
public and admin, is called with generated requests — valid ones and ones that break
the schema — with an admin key (which also opens the public API). No answer may be a
5xx, and every answer must be one the document describes: its status, content type,
headers and body schema (errors in OpenAI's shape). Generation is derandomised, so a
run is reproducible; the whole module takes well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import ADMIN_KEY, API_KEY
from .fixed_gateway import FIXED, fixed_gateway
from .services import GatewayProcess, RedisProcess

MAX_EXAMPLES = 50  # per operation and mode; the module takes about 40 s
FUZZ_DB = 7  # the fuzzer's experiments and models stay out of the other tests' database
FUZZED_EXPERIMENT = "fuzzed"  # what valid admin requests change
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with fixed_gateway(redis_server, tmp_path_factory.mktemp("fuzz"), FUZZ_DB) as (gw, _):
        yield gw


@pytest.fixture(scope="module")
def response_id(fuzz_gateway: GatewayProcess) -> str:
    """A real response (made with the admin key, whose tenant is the client's) to rate."""
    resp = httpx.post(
        fuzz_gateway.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, resp.text
    rid: str = resp.json()["id"]
    return rid


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: GatewayProcess) -> Any:
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    schema.config.generation.update(deterministic=True, allow_x00=True)
    return schema


OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/feedback"),
    ("GET", "/v1/feedback/{response_id}"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/admin/experiments"),
    ("GET", "/admin/experiments/{name}"),
    ("PUT", "/admin/experiments/{name}"),
    ("POST", "/admin/experiments/{name}/arms"),
    ("POST", "/admin/experiments/{name}/promote"),
    ("POST", "/admin/experiments/{name}/rollback"),
    ("POST", "/admin/experiments/{name}/resume"),
    ("GET", "/admin/experiments/{name}/history"),
    ("GET", "/admin/experiments/{name}/report"),
    ("GET", "/admin/models"),
    ("POST", "/admin/models"),
    ("GET", "/admin/models/{name}"),
    ("DELETE", "/admin/models/{name}"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/{key_id}"),
    ("PATCH", "/admin/keys/{key_id}"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("POST", "/admin/keys/{key_id}/rotate"),
    ("GET", "/admin/tenants/{tenant}"),
    ("PUT", "/admin/tenants/{tenant}"),
    ("GET", "/admin/audit"),
    ("DELETE", "/admin/users/{user}"),
]


def steer(case: Any, path: str, pick: int, response_id: str) -> None:
    """Point some valid requests at what exists (a generated name is unknown: 400/404), so
    that routing, the upstream call, ratings and experiment changes are fuzzed as well."""
    body = case.body if isinstance(case.body, dict) else {}
    if path == "/v1/chat/completions" and "model" in body:
        body["model"] = ("default", *FIXED)[pick % 4]
    elif path == "/v1/feedback" and "response_id" in body:
        body["response_id"] = response_id
    elif path == "/v1/feedback/{response_id}":
        case.path_parameters["response_id"] = response_id
    elif path.startswith("/admin/experiments/{name}"):
        case.path_parameters["name"] = FUZZED_EXPERIMENT
        arms = body.get("arms")
        if isinstance(arms, list):
            for i, arm in enumerate(arms):
                if isinstance(arm, dict) and "model" in arm:
                    arm["model"] = FIXED[(pick + i) % 3]
        for key in ("fallback", "control"):
            if isinstance(body.get(key), str):
                body[key] = arms[0]["model"] if key == "control" and arms else FIXED[pick % 3]
        if isinstance(body.get("shadow"), dict) and "model" in body["shadow"]:
            body["shadow"]["model"] = FIXED[pick % 3]
        if "model" in body and path.endswith(("/arms", "/promote")):
            body["model"] = FIXED[pick % 3]
    elif path == "/admin/models" and "upstream" in body:
        body["upstream"] = "fixed"


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_operation_fails_or_breaks_its_schema(
    method: str, path: str, api_schema: Any, fuzz_gateway: GatewayProcess, response_id: str
) -> None:
    operation = api_schema[path][method]
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @given(case=cases, pick=st.integers(0, 7))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, pick: int) -> None:
        if pick < 4 and case.meta.generation.mode is GenerationMode.POSITIVE:
            steer(case, path, pick, response_id)
        case.call_and_validate(
            base_url=fuzz_gateway.url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            checks=CHECKS,
            timeout=10,
        )

    fuzz()


@pytest.mark.slow
def test_schemathesis_run_finds_nothing(fuzz_gateway: GatewayProcess, tmp_path: Path) -> None:
    """The CLI, as a user runs it: its coverage phase (boundaries, every missing or wrongly
    typed field, unsupported methods) and its stateful phase add what the cases above miss;
    every check but positive_data_acceptance and use_after_free (see below)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            fuzz_gateway.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            # A generated model or id does not exist; and DELETE /admin/keys/{id} revokes a
            # key, which stays readable with its revoked_at (the audit needs it), where this
            # check expects a 404.
            "positive_data_acceptance,use_after_free",
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            "30",
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the repo and the next run
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.lower()


def test_the_gateway_still_serves_after_the_fuzzing(fuzz_gateway: GatewayProcess) -> None:
    resp = httpx.post(
        fuzz_gateway.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "fixed-a", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "answer from fixed-a"
    assert fuzz_gateway.proc is not None and fuzz_gateway.proc.poll() is None


def test_every_operation_is_described(fuzz_gateway: GatewayProcess) -> None:
    """Each operation has its request body (where it reads one), errors and security."""
    doc = httpx.get(fuzz_gateway.url + "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    bodies = set()
    assert sorted((m.upper(), p) for p, item in doc["paths"].items() for m in item) == sorted(
        OPERATIONS
    )  # a new route is fuzzed too
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)  # the gateway says 400
            if "requestBody" in op:
                bodies.add((method, path))
            if op.get("security") != []:
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (method, path)
    assert bodies == {
        ("post", "/v1/chat/completions"),
        ("post", "/v1/embeddings"),
        ("post", "/v1/feedback"),
        ("put", "/admin/experiments/{name}"),
        ("post", "/admin/experiments/{name}/arms"),
        ("post", "/admin/experiments/{name}/promote"),
        ("post", "/admin/models"),
        ("post", "/admin/keys"),
        ("patch", "/admin/keys/{key_id}"),
        ("put", "/admin/tenants/{tenant}"),
    }
