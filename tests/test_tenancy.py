"""Tenancy: every route of the public API, the admin API and the console × every role,
against what tenant ``beta`` owns; and console sessions bound to their key.

The matrix is generated from the route table of an app made by ``create_app`` (the
console included): :data:`MATRIX` has one row per route (method and path template as
the app declares them), naming the request to make against beta's resources and the
status each role must get. A route with no row fails :func:`test_every_route_has_a_row`,
so a new route cannot ship without deciding who may use it.

Roles (keys made at runtime, as an operator makes them): ``client`` and ``reviewer`` of
tenant alpha, ``admin_a`` (an admin key of tenant alpha) and ``admin_all`` (a config
admin key: an admin of every tenant). Beta owns a model, an experiment, interactions in
English, Thai and Vietnamese (NFC and NFD) with their ratings, a review item, a dataset
version, a training job and keys. Besides the status, an answer that succeeds for a role
of alpha must not hold anything of beta's (names, key ids, texts) unless the row says why.

In process (Starlette's ``TestClient`` on ``create_app``), a real Redis, the instant
``fixed-*`` upstream.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from gateway.app import create_app
from gateway.core import keys
from gateway.core.config import build_settings

from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_config
from .services import RedisProcess

DB = 14  # this module's Redis database
ROOT_KEY = "sk-tenancy-root-0123456789"
ROLES = ("client", "reviewer", "admin_a", "admin_all")
# What beta's interactions say (each in NFC and NFD): none of it may reach alpha.
TEXTS = {
    "en": "beta's secret refund plan",
    "th": "แผนคืนเงินลับของเบต้า",
    "vi": "kế hoạch hoàn tiền bí mật của beta",
}


@dataclass(frozen=True)
class Row:
    """One route's request against beta's resources and each role's status.

    ``path`` and the values of ``json``/``form`` may hold ``{exp}``, ``{model}``,
    ``{rid}``, ``{key_get}``, ``{key_revoke}``, ``{key_rotate}``, ``{version}`` (beta's
    experiment's current version) and ``{secret}`` (the role's own key)."""

    path: str
    expect: tuple[int, int, int, int]  # client, reviewer, admin_a, admin_all
    json: Any = None
    form: dict[str, str] | None = None
    shows_all: str = ""  # why a successful answer may show beta's names to alpha
    extra: dict[str, Any] = field(default_factory=dict)


# The table: (method, path template) → row. A route that is added gets its row here.
MATRIX: dict[tuple[str, str], Row] = {
    # the public API
    ("POST", "/v1/chat/completions"): Row(
        "/v1/chat/completions",
        (400, 400, 400, 200),  # another tenant's experiment is an unknown model
        json={"model": "{exp}", "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/v1/feedback"): Row(
        "/v1/feedback", (404, 404, 404, 404), json={"response_id": "{rid}", "rating": "up"}
    ),
    ("GET", "/v1/feedback/{response_id}"): Row("/v1/feedback/{rid}", (404, 404, 404, 404)),
    ("POST", "/v1/embeddings"): Row(
        "/v1/embeddings",
        (400, 400, 400, 404),  # another tenant's model is unknown; fixed-* embed nothing
        json={"model": "{model}", "input": "hi"},
    ),
    ("GET", "/v1/models"): Row("/v1/models", (200, 200, 200, 200)),
    ("GET", "/healthz"): Row("/healthz", (200, 200, 200, 200)),
    ("GET", "/readyz"): Row("/readyz", (200, 200, 200, 200)),
    ("GET", "/metrics"): Row(
        "/metrics",
        (200, 200, 200, 200),
        shows_all="Prometheus' scrape: no key, every experiment's series (serve it privately)",
    ),
    ("GET", "/openapi.json"): Row("/openapi.json", (200, 200, 200, 200)),
    ("GET", "/docs"): Row("/docs", (200, 200, 200, 200)),
    ("GET", "/docs/oauth2-redirect"): Row("/docs/oauth2-redirect", (200, 200, 200, 200)),
    ("GET", "/redoc"): Row("/redoc", (200, 200, 200, 200)),
    # the admin API
    ("GET", "/admin/experiments"): Row("/admin/experiments", (403, 403, 200, 200)),
    ("POST", "/admin/experiments/{name:experiment}/arms"): Row(
        "/admin/experiments/{exp}/arms",
        (403, 403, 404, 200),
        json={"model": "shared-m", "weight": 0},
    ),
    ("POST", "/admin/experiments/{name:experiment}/promote"): Row(
        "/admin/experiments/{exp}/promote", (403, 403, 404, 200), json={"model": "{model}"}
    ),
    ("POST", "/admin/experiments/{name:experiment}/rollback"): Row(
        "/admin/experiments/{exp}/rollback", (403, 403, 404, 200), json={}
    ),
    # after the rows above, beta's experiment is paused by a person's change: resumable
    ("POST", "/admin/experiments/{name:experiment}/resume"): Row(
        "/admin/experiments/{exp}/resume", (403, 403, 404, 200), json={}
    ),
    ("GET", "/admin/experiments/{name:experiment}/history"): Row(
        "/admin/experiments/{exp}/history", (403, 403, 404, 200)
    ),
    ("GET", "/admin/experiments/{name:experiment}/report"): Row(
        "/admin/experiments/{exp}/report", (403, 403, 404, 200)
    ),
    ("GET", "/admin/experiments/{name:experiment}"): Row(
        "/admin/experiments/{exp}", (403, 403, 404, 200)
    ),
    ("PUT", "/admin/experiments/{name:experiment}"): Row(
        "/admin/experiments/{exp}",
        (403, 403, 409, 200),  # a name another tenant holds is taken, like any other
        json={"arms": [{"model": "{model}"}], "tenant": "beta"},
    ),
    ("GET", "/admin/models"): Row("/admin/models", (403, 403, 200, 200)),
    ("POST", "/admin/models"): Row(
        "/admin/models",
        (403, 403, 403, 201),
        json={"name": "beta-m2", "upstream": "fixed", "model": "fixed-a", "tenant": "beta"},
    ),
    ("GET", "/admin/models/{name:path}"): Row("/admin/models/{model}", (403, 403, 404, 200)),
    ("DELETE", "/admin/models/{name:path}"): Row(
        "/admin/models/{model}",
        (403, 403, 404, 409),  # beta's experiment still uses it
    ),
    ("GET", "/admin/keys"): Row("/admin/keys", (403, 403, 200, 200)),
    ("POST", "/admin/keys"): Row(
        "/admin/keys", (403, 403, 403, 201), json={"name": "beta-new", "tenant": "beta"}
    ),
    ("GET", "/admin/keys/{key_id}"): Row("/admin/keys/{key_get}", (403, 403, 404, 200)),
    ("PATCH", "/admin/keys/{key_id}"): Row(
        "/admin/keys/{key_get}", (403, 403, 404, 200), json={"rpm": 5}
    ),
    ("DELETE", "/admin/keys/{key_id}"): Row("/admin/keys/{key_revoke}", (403, 403, 404, 200)),
    ("POST", "/admin/keys/{key_id}/rotate"): Row(
        "/admin/keys/{key_rotate}/rotate", (403, 403, 404, 200)
    ),
    ("GET", "/admin/tenants/{tenant}"): Row("/admin/tenants/beta", (403, 403, 404, 200)),
    ("PUT", "/admin/tenants/{tenant}"): Row(
        "/admin/tenants/beta", (403, 403, 403, 200), json={"budget": None}
    ),
    ("GET", "/admin/audit"): Row("/admin/audit", (403, 403, 200, 200)),
    ("DELETE", "/admin/users/{user:user_id}"): Row(
        "/admin/users/beta-user-5?tenant=beta", (403, 403, 403, 200)
    ),
    # the console (a bearer key; sessions are tested below)
    ("GET", "/ui/login"): Row("/ui/login", (200, 200, 200, 200)),
    ("POST", "/ui/login"): Row("/ui/login", (403, 303, 303, 303), form={"key": "{secret}"}),
    ("POST", "/ui/logout"): Row("/ui/logout", (403, 303, 303, 303), form={}),
    ("GET", "/ui/"): Row("/ui/", (403, 303, 200, 200)),
    ("GET", "/ui/experiments/{name:path}"): Row("/ui/experiments/{exp}", (403, 403, 404, 200)),
    ("POST", "/ui/actions/confirm"): Row(
        "/ui/actions/confirm",
        (403, 403, 404, 200),
        form={"experiment": "{exp}", "action": "ramp", "model": "{model}", "weight": "50"},
    ),
    ("POST", "/ui/actions/apply"): Row(
        "/ui/actions/apply",
        (403, 403, 404, 303),
        form={
            "experiment": "{exp}",
            "action": "ramp",
            "model": "{model}",
            "weight": "60",
            "version": "{version}",
        },
    ),
    ("GET", "/ui/review"): Row("/ui/review", (403, 200, 200, 200)),
    ("GET", "/ui/review/next"): Row("/ui/review/next?experiment={exp}", (403, 200, 200, 200)),
    ("POST", "/ui/review/save"): Row(
        "/ui/review/save",
        (403, 404, 404, 303),
        form={"experiment": "{exp}", "id": "{rid}", "action": "skip"},
    ),
    ("GET", "/ui/interactions"): Row("/ui/interactions", (403, 200, 200, 200)),
    ("GET", "/ui/interactions/{response_id}"): Row("/ui/interactions/{rid}", (403, 404, 404, 200)),
    ("GET", "/ui/datasets"): Row("/ui/datasets", (403, 403, 200, 200)),
    ("GET", "/ui/datasets/{experiment}/{vid}/{split}.jsonl"): Row(
        "/ui/datasets/{exp}/beta-v1/train.jsonl", (403, 403, 404, 200)
    ),
    ("GET", "/ui/jobs"): Row("/ui/jobs", (403, 403, 200, 200)),
    ("MOUNT", "/ui/static"): Row("/ui/static/console.css", (200, 200, 200, 200)),
}


def route_table(app: Any) -> set[tuple[str, str]]:
    """Every (method, path template) the app serves (HEAD aside), mounts as MOUNT."""
    out: set[tuple[str, str]] = set()
    for r in app.routes:
        if isinstance(r, Mount):
            out.add(("MOUNT", r.path))
        elif isinstance(r, APIRoute | Route):
            out |= {(m, r.path) for m in (r.methods or ()) if m != "HEAD"}
    return out


@dataclass
class Beta:
    """What the fixture made: beta's resources and alpha's keys."""

    secrets: dict[str, str]
    values: dict[str, str]
    markers: list[str]  # what no answer to alpha may hold
    store: redis.Redis
    config: Path = Path()  # the config file, for the command line


def both_forms(text: str) -> list[str]:
    return [unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)]


@pytest.fixture(scope="module")
def app(
    redis_server: RedisProcess, faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Beta]]:
    store = redis.Redis(port=redis_server.port, db=DB)
    store.flushdb()
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    work: Path = tmp_path_factory.mktemp("tenancy")
    datasets = work / "datasets"
    config = fixed_config(
        faulty.base_url,
        url,
        data_dir=str(work / "data"),
        retrain={"dataset_dir": str(datasets)},
    )
    config["auth"] = {"admin_keys": [{"key": ROOT_KEY, "name": "root"}]}
    config_path = work / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with TestClient(create_app(build_settings(config)), base_url="http://gateway") as http:
        beta = make_beta(http, store, datasets)
        beta.config = config_path
        yield http, beta


def make_beta(http: TestClient, store: redis.Redis, datasets: Path) -> Beta:
    root = {"Authorization": f"Bearer {ROOT_KEY}"}

    def ok(r: Any) -> Any:
        assert r.status_code < 300, r.text
        return r.json()

    def key(name: str, tenant: str, role: str = "client") -> dict[str, Any]:
        body = {"name": name, "tenant": tenant, "role": role}
        made: dict[str, Any] = ok(http.post("/admin/keys", headers=root, json=body))
        return made

    model = {"upstream": "fixed", "model": "fixed-a"}
    ok(http.post("/admin/models", headers=root, json={"name": "shared-m", **model}))
    ok(http.post("/admin/models", headers=root, json={"name": "beta-m", "tenant": "beta", **model}))
    ok(
        http.put(
            "/admin/experiments/beta-exp",
            headers=root,
            json={"arms": [{"model": "beta-m"}], "tenant": "beta"},
        )
    )
    secrets = {
        "client": key("alpha-app", "alpha")["key"],
        "reviewer": key("alpha-reviewer", "alpha", "reviewer")["key"],
        "admin_a": key("alpha-admin", "alpha", "admin")["key"],
        "admin_all": ROOT_KEY,
    }
    beta_app = key("beta-app", "beta")
    kept = {k: key(f"beta-{k}", "beta")["id"] for k in ("get", "revoke", "rotate")}
    texts = [t for lang in TEXTS.values() for t in both_forms(lang)]
    rids = []
    for i, text in enumerate(texts):
        r = ok(
            http.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {beta_app['key']}"},
                json={
                    "model": "beta-exp",
                    "user": f"beta-user-{i}",
                    "messages": [{"role": "user", "content": text}],
                },
            )
        )
        rids.append(r["id"])
        ok(
            http.post(
                "/v1/feedback",
                headers={"Authorization": f"Bearer {beta_app['key']}"},
                json={"response_id": r["id"], "rating": "down"},
            )
        )
    rid = rids[0]
    item = {"response_id": rid, "correction": None, "question": texts[0], "answer": "x"}
    store.hset(keys.PLAIN_KEYSPACE.review("beta-exp"), rid, orjson.dumps(item))
    version = datasets / "beta-exp" / "beta-v1"
    version.mkdir(parents=True)
    manifest = {
        "id": "beta-v1",
        "experiment": "beta-exp",
        "created": "2026-01-01T00:00:00Z",
        "parent": None,
        "new_examples": 1,
        "counts": {"train": 1},
        "tokens": {"train": 5},
        "by_source": {"train": {"correction": 1}},
        "dropped": {},
        "review_queue": {"added": 0, "corrections_used": 0},
        "cost_estimates": [],
    }
    line = {"messages": [{"role": "user", "content": TEXTS["th"]}]}
    # a shared experiment's dataset: every tenant's examples, beta's among them
    shared = datasets / "default" / "shared-v1"
    shared.mkdir(parents=True)
    for where, doc in ((version, manifest), (shared, {**manifest, "id": "shared-v1"})):
        (where / "manifest.json").write_bytes(
            orjson.dumps({**doc, "experiment": where.parent.name})
        )
        (where / "train.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    job = {"id": "ftjob-beta", "status": "succeeded", "experiment": "beta-exp", "loss": []}
    job |= {"created": time.time(), "updated": time.time(), "events": [], "result_model": None}
    store.set(keys.PLAIN_KEYSPACE.job("ftjob-beta"), orjson.dumps(job))
    store.zadd(keys.PLAIN_KEYSPACE.jobs, {"ftjob-beta": time.time()})
    deadline = time.monotonic() + 10  # the interaction log's writer flushes
    while time.monotonic() < deadline and not all(store.exists(keys.interaction(r)) for r in rids):
        time.sleep(0.05)
    values = {
        "exp": "beta-exp",
        "model": "beta-m",
        "rid": rid,
        "key_get": kept["get"],
        "key_revoke": kept["revoke"],
        "key_rotate": kept["rotate"],
    }
    markers = ["beta-exp", "beta-m", "ftjob-beta", "beta-v1", beta_app["id"], *kept.values()]
    markers += texts + rids
    return Beta(secrets, values, markers, store)


def fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def call(http: TestClient, beta: Beta, method: str, row: Row, role: str) -> Any:
    secret = beta.secrets[role]
    version = orjson.loads(beta.store.hget(keys.PLAIN_KEYSPACE.experiments, "beta-exp") or b"{}")
    values = {**beta.values, "secret": secret, "version": str(version.get("version", 0))}
    headers = {"Authorization": f"Bearer {secret}", "accept": "application/json"}
    path = fill(row.path, values)
    verb = "GET" if method == "MOUNT" else method
    if row.form is not None:
        headers["content-type"] = "application/x-www-form-urlencoded"
        if path == "/ui/login":
            del headers["Authorization"]  # a person logs in with the form alone
        body = str(httpx.QueryParams(fill(row.form, values)))
        return http.request(verb, path, headers=headers, content=body, follow_redirects=False)
    return http.request(
        verb, path, headers=headers, json=fill(row.json, values), follow_redirects=False
    )


def test_every_route_has_a_row(app: tuple[TestClient, Beta]) -> None:
    http, _ = app
    served = route_table(http.app)
    assert served - set(MATRIX) == set(), "routes without a row in MATRIX"
    assert set(MATRIX) - served == set(), "rows of routes the app does not serve"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "template"), sorted(MATRIX))
def test_the_matrix(app: tuple[TestClient, Beta], method: str, template: str, role: str) -> None:
    http, beta = app
    row = MATRIX[(method, template)]
    want = row.expect[ROLES.index(role)]
    r = call(http, beta, method, row, role)
    assert r.status_code == want, f"{method} {row.path} as {role}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    if role != "admin_all" and not row.shows_all and r.status_code < 400:
        asked = str(r.request.url) + r.request.content.decode()  # what the request named
        shown = r.text + r.headers.get("location", "")
        leaked = [m for m in beta.markers if m in shown and m not in asked]
        assert not leaked, f"{method} {row.path} as {role} shows beta's {leaked}"


# -- console sessions --------------------------------------------------------------------

OWN = "http://gateway"  # the TestClient's origin


def log_in(http: TestClient, key: str, **headers: str) -> Any:
    h = {"content-type": "application/x-www-form-urlencoded", **headers}
    body = str(httpx.QueryParams({"key": key}))
    return http.post("/ui/login", headers=h, content=body, follow_redirects=False)


def fresh_key(http: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "tenant": "alpha", "role": "admin", **extra}
    r = http.post("/admin/keys", headers={"Authorization": f"Bearer {ROOT_KEY}"}, json=body)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "null"},
        {"origin": "http://gateway:8080"},
        {"origin": "https://gateway"},
        {"origin": "http://evil.example"},
        {"origin": "http://gateway.evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"origin": OWN, "sec-fetch-site": "same-site"},
    ],
    ids=["null", "port", "scheme", "host", "suffix", "cross-site", "same-site"],
)
def test_a_login_from_another_origin_sets_no_session(
    app: tuple[TestClient, Beta], headers: dict[str, str]
) -> None:
    http, beta = app
    r = log_in(http, beta.secrets["reviewer"], **headers)
    assert r.status_code == 403
    assert "fw_console" not in r.headers.get("set-cookie", "")
    assert "own pages" in r.text


def test_a_login_from_the_consoles_own_page_gets_a_session_of_its_own(
    app: tuple[TestClient, Beta],
) -> None:
    http, beta = app
    cookies = []
    for headers in ({"origin": OWN}, {"origin": OWN}, {}):  # {}: a script, no Origin
        r = log_in(http, beta.secrets["reviewer"], **headers)
        assert r.status_code == 303, r.text
        cookies.append(r.cookies["fw_console"])
    assert len(set(cookies)) == 3  # a nonce in each: two logins in one second differ
    assert all(beta.secrets["reviewer"] not in c for c in cookies)
    http.cookies.clear()


def use(http: TestClient, cookie: str | None) -> TestClient:
    """The client with only this session's cookie (none: no session)."""
    http.cookies.clear()
    if cookie is not None:
        http.cookies.set("fw_console", cookie)
    return http


def session(http: TestClient, key: str) -> tuple[str, str]:
    """A logged-in session's cookie and a CSRF token of its pages."""
    r = log_in(http, key, origin=OWN)
    assert r.status_code == 303, r.text
    cookie = r.cookies["fw_console"]
    http.cookies.clear()
    page = use(http, cookie).get("/ui/experiments/alpha-exp")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    return cookie, token.group(1)


def ramp(http: TestClient, cookie: str, token: str, origin: str | None = OWN) -> Any:
    state = http.get(
        "/admin/experiments/alpha-exp", headers={"Authorization": f"Bearer {ROOT_KEY}"}
    )
    fields = {
        "csrf": token,
        "experiment": "alpha-exp",
        "action": "ramp",
        "model": "shared-m",
        "weight": str(len(cookie) % 7 + 1),
        "version": str(state.json()["version"]),
    }
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["origin"] = origin
    return use(http, cookie).post(
        "/ui/actions/apply",
        headers=headers,
        content=str(httpx.QueryParams(fields)),
        follow_redirects=False,
    )


@pytest.fixture(scope="module")
def alpha_exp(app: tuple[TestClient, Beta]) -> str:
    http, _ = app
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    body = {"arms": [{"model": "shared-m"}], "tenant": "alpha"}
    assert http.put("/admin/experiments/alpha-exp", headers=root, json=body).status_code == 200
    return "alpha-exp"


@pytest.mark.parametrize("origin", ["null", "http://gateway:8080", "https://gateway"])
def test_a_form_from_another_origin_changes_nothing(
    app: tuple[TestClient, Beta], alpha_exp: str, origin: str
) -> None:
    http, _ = app
    made = fresh_key(http, f"ops-{abs(hash(origin)) % 10_000}")
    cookie, token = session(http, made["key"])
    refused = ramp(http, cookie, token, origin)
    assert refused.status_code == 403, refused.text
    assert ramp(http, cookie, token).status_code == 303  # the same form from its own page


def _revoke(http: TestClient, made: dict[str, Any]) -> None:
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    assert http.delete(f"/admin/keys/{made['id']}", headers=root).status_code == 200


def _rotate(http: TestClient, made: dict[str, Any]) -> None:
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    assert http.post(f"/admin/keys/{made['id']}/rotate", headers=root).status_code == 200


def _demote(http: TestClient, made: dict[str, Any]) -> None:
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    r = http.patch(f"/admin/keys/{made['id']}", headers=root, json={"role": "client"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "change", [_revoke, _rotate, _demote], ids=["revoked", "rotated", "demoted"]
)
def test_a_key_that_loses_its_standing_loses_its_session_in_the_same_second(
    app: tuple[TestClient, Beta], alpha_exp: str, change: Any
) -> None:
    http, _ = app
    made = fresh_key(http, f"ops-{change.__name__.strip('_')}")
    cookie, token = session(http, made["key"])
    change(http, made)
    started = time.monotonic()
    api = http.get("/admin/experiments", headers={"Authorization": f"Bearer {made['key']}"})
    assert api.status_code in (401, 403)
    before = http.get(
        "/admin/experiments/alpha-exp", headers={"Authorization": f"Bearer {ROOT_KEY}"}
    )
    refused = ramp(http, cookie, token)
    page = use(http, cookie).get("/ui/experiments/alpha-exp", follow_redirects=False)
    assert time.monotonic() - started < 1.0
    assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/login")
    assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
    after = http.get(
        "/admin/experiments/alpha-exp", headers={"Authorization": f"Bearer {ROOT_KEY}"}
    )
    assert after.json()["version"] == before.json()["version"]


def test_an_expired_key_loses_its_session_when_the_api_refuses_it(
    app: tuple[TestClient, Beta], alpha_exp: str
) -> None:
    http, _ = app
    made = fresh_key(http, "ops-expiring", expires_at=time.time() + 1.5)
    cookie, token = session(http, made["key"])
    while (
        http.get(
            "/admin/experiments", headers={"Authorization": f"Bearer {made['key']}"}
        ).status_code
        == 200
    ):
        time.sleep(0.05)
    refused = ramp(http, cookie, token)
    assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/login")


def test_a_tenant_admins_session_is_its_tenants_admin(app: tuple[TestClient, Beta]) -> None:
    """The same rule through a session cookie as through the bearer key of the matrix."""
    http, beta = app
    r = log_in(http, beta.secrets["admin_a"], origin=OWN)
    cookie = r.cookies["fw_console"]
    use(http, cookie)
    assert http.get("/ui/experiments/beta-exp").status_code == 404
    listed = http.get("/ui/interactions")
    assert listed.status_code == 200
    assert not [m for m in beta.markers if m in listed.text]
    download = http.get("/ui/datasets/beta-exp/beta-v1/train.jsonl")
    assert download.status_code == 404 and TEXTS["th"] not in download.text


# -- the command line ----------------------------------------------------------------------


def gateway_keys(beta: Beta, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, "--config", str(beta.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_command_line_is_an_operator_of_every_tenant_and_its_revoke_ends_sessions(
    app: tuple[TestClient, Beta], alpha_exp: str
) -> None:
    """``gateway keys`` runs where the store is: the rule makes it an admin of every
    tenant, and a key it revokes loses its console session as one revoked by the API."""
    http, beta = app
    listed = gateway_keys(beta, "list")
    assert beta.values["key_get"] in listed and "alpha-admin" in listed
    made = fresh_key(http, "ops-cli")
    cookie, token = session(http, made["key"])
    gateway_keys(beta, "revoke", made["id"])
    deadline = time.monotonic() + 1.0  # the app follows the store's version (refresh_s)
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    while time.monotonic() < deadline:
        if (
            http.get(
                "/admin/experiments", headers={"Authorization": f"Bearer {made['key']}"}
            ).status_code
            == 401
        ):
            break
        time.sleep(0.05)
    before = http.get("/admin/experiments/alpha-exp", headers=root).json()["version"]
    refused = ramp(http, cookie, token)
    assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/login")
    assert http.get("/admin/experiments/alpha-exp", headers=root).json()["version"] == before


def test_a_shared_experiments_dataset_is_only_for_an_admin_of_every_tenant(
    app: tuple[TestClient, Beta],
) -> None:
    """Its examples are every tenant's: a tenant's admin neither lists nor downloads it."""
    http, beta = app
    path = "/ui/datasets/default/shared-v1/train.jsonl"
    for role, status in (("reviewer", 403), ("admin_a", 404), ("admin_all", 200)):
        headers = {"Authorization": f"Bearer {beta.secrets[role]}"}
        r = http.get(path, headers=headers)
        assert r.status_code == status, (role, r.text)
        assert (TEXTS["th"] in r.text) == (status == 200)
        listed = http.get("/ui/datasets", headers=headers)
        assert ("shared-v1" in listed.text) == (role == "admin_all")


def test_an_experiment_stored_with_another_tenants_model_is_not_served(
    app: tuple[TestClient, Beta],
) -> None:
    """A state written before the rule refused it (here: straight into Redis) names
    beta's model from alpha's experiment: no replica serves it."""
    http, beta = app
    spec = {"arms": [{"model": "beta-m", "weight": 1.0}], "tenant": "alpha"}
    state = {"object": "experiment", "name": "alpha-old", "version": 1, "spec": spec}
    beta.store.hset(keys.PLAIN_KEYSPACE.experiments, "alpha-old", orjson.dumps(state))
    beta.store.incr(keys.PLAIN_KEYSPACE.control_version)
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    body = {"arms": [{"model": "shared-m"}], "tenant": "alpha"}
    assert http.put("/admin/experiments/alpha-new", headers=root, json=body).status_code == 200
    client = {"Authorization": f"Bearer {beta.secrets['client']}"}
    hi = [{"role": "user", "content": "hi"}]
    ok = http.post(
        "/v1/chat/completions", headers=client, json={"model": "alpha-new", "messages": hi}
    )
    assert ok.status_code == 200  # the live state was reloaded with both
    r = http.post(
        "/v1/chat/completions", headers=client, json={"model": "alpha-old", "messages": hi}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    listed = http.get("/v1/models", headers=client).json()["data"]
    assert "alpha-old" not in {m["id"] for m in listed}
