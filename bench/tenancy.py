"""The hostile-tenant exercise: how many attempts to cross a tenant's line succeed.

    .venv/bin/python -m bench.tenancy [--workers 2] [--verbose]

Starts its own ``redis-server``, an instant upstream and ``gateway serve --workers 2``
(every process it starts, it stops), sets up two tenants — ``acme`` and ``globex``, each
with a private model, an experiment, interactions in English, Thai and Vietnamese, a
review queue item, a dataset version and a training job — and keys for them (client,
reviewer, admin of the tenant), then makes every attempt below as acme (or as a key that
has just lost its standing) and counts the attempts that got what they should not have.

Areas:

* ``tenant isolation`` — acme's admin, reviewer and client keys against globex's
  experiment, model, interactions, ratings, review queue, datasets, jobs, keys, tenant
  policy and audit entries, through the admin API, the console (a bearer key and a
  session cookie) and the public API; cross-tenant references (an arm, a shadow, a
  fallback naming globex's model); names that leak (another tenant's name answered
  otherwise than an unknown or a taken one).
* ``console sessions and login`` — login CSRF (``Origin: null``, another port, another
  scheme, another host, ``Sec-Fetch-Site: cross-site``), forms with a foreign origin, two
  logins in the same second, and the session of a key that was revoked, rotated, expired
  or made a client key.

Prints one table (area, attempts, failures) and, with ``--verbose``, each failed attempt.
Exit status 0 when no attempt failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from gateway.core import keys
from tests.faulty_upstream import FaultyUpstream
from tests.services import GatewayProcess, RedisProcess

from .report import table

ROOT_KEY = "sk-bench-root-0123456789"
ID_SECRET = "bench-tenancy-secret-0123456789"
TEXTS = {
    "acme": ["acme order 1001", "คำสั่งซื้อของ acme", "đơn hàng của acme"],
    "globex": ["globex secret plan", "แผนลับของ globex", "kế hoạch bí mật của globex"],
}
ISOLATION = "tenant isolation"
SESSIONS = "console sessions and login"


@dataclass
class Tally:
    attempts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def check(self, area: str, what: str, held: bool) -> None:
        """One attempt: ``held`` is True when the line held (the attempt failed)."""
        self.attempts[area] = self.attempts.get(area, 0) + 1
        if not held:
            self.failures.setdefault(area, []).append(what)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def leaks(r: httpx.Response, *secrets: str) -> bool:
    return any(s in r.text for s in secrets)


def neutral(text: str, *names: str) -> str:
    """An answer with the names in it replaced, to compare two answers' shapes."""
    for n in names:
        text = text.replace(n, "NAME")
    return re.sub(r"\s+", " ", text)


class Exercise:
    def __init__(self, gw: GatewayProcess, store: redis.Redis, datasets: Path) -> None:
        self.gw = gw
        self.url = gw.url
        self.store = store
        self.datasets = datasets
        self.http = httpx.Client(base_url=gw.url, timeout=30)
        self.tally = Tally()
        self.k: dict[str, dict[str, Any]] = {}
        self.rids: dict[str, list[str]] = {}

    # -- set-up ----------------------------------------------------------------------

    def root(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, headers=bearer(ROOT_KEY), **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"set-up: {method} {path} → {r.status_code} {r.text}")
        return r

    def key(self, name: str, tenant: str | None, role: str, **extra: Any) -> dict[str, Any]:
        doc = {"name": name, "tenant": tenant, "role": role, **extra}
        made: dict[str, Any] = self.root("POST", "/admin/keys", json=doc).json()
        self.k[name] = made
        return made

    def secret(self, name: str) -> str:
        return str(self.k[name]["key"])

    def setup(self) -> None:
        self.root(
            "POST",
            "/admin/models",
            json={"name": "shared-m", "upstream": "fixed", "model": "fixed-a"},
        )
        for t in ("acme", "globex"):
            self.root(
                "POST",
                "/admin/models",
                json={"name": f"{t}-m", "upstream": "fixed", "model": "fixed-b", "tenant": t},
            )
            self.root(
                "PUT",
                f"/admin/experiments/{t}-exp",
                json={
                    "arms": [{"model": f"{t}-m"}, {"model": "shared-m", "weight": 0}],
                    "tenant": t,
                },
            )
            self.key(f"{t}-app", t, "client")
            self.key(f"{t}-reviewer", t, "reviewer")
            self.key(f"{t}-admin", t, "admin")
        time.sleep(1.2)  # every worker follows the live state
        for t in ("acme", "globex"):
            self.rids[t] = []
            for i, text in enumerate(TEXTS[t]):
                r = self.http.post(
                    "/v1/chat/completions",
                    headers=bearer(self.secret(f"{t}-app")),
                    json={
                        "model": f"{t}-exp",
                        "user": f"{t}-user-{i}",
                        "messages": [{"role": "user", "content": text}],
                    },
                )
                if r.status_code != 200:
                    raise RuntimeError(f"set-up chat: {r.status_code} {r.text}")
                rid = r.json()["id"]
                self.rids[t].append(rid)
                f = self.http.post(
                    "/v1/feedback",
                    headers=bearer(self.secret(f"{t}-app")),
                    json={"response_id": rid, "rating": "down"},
                )
                if f.status_code != 201:
                    raise RuntimeError(f"set-up rating: {f.status_code} {f.text}")
            self.seed_offline(t)
        time.sleep(1.5)  # the interaction log's writer flushes

    def seed_offline(self, t: str) -> None:
        """What ``retrain build`` and a training job leave behind for tenant ``t``."""
        rid = self.rids[t][0]
        item = {"response_id": rid, "correction": None, "question": TEXTS[t][0], "answer": "x"}
        self.store.hset(keys.PLAIN_KEYSPACE.review(f"{t}-exp"), rid, orjson.dumps(item))
        version = self.datasets / f"{t}-exp" / f"{t}-v1"
        version.mkdir(parents=True)
        manifest = {
            "id": f"{t}-v1",
            "experiment": f"{t}-exp",
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
        (version / "manifest.json").write_bytes(orjson.dumps(manifest))
        line = {"messages": [{"role": "user", "content": TEXTS[t][1]}]}
        (version / "train.jsonl").write_bytes(orjson.dumps(line) + b"\n")
        job = {
            "v": 1,
            "id": f"ftjob-{t}",
            "status": "succeeded",
            "created": time.time(),
            "updated": time.time(),
            "experiment": f"{t}-exp",
            "dataset": f"{t}-v1",
            "loss": [],
            "events": [],
            "result_model": f"{t}-m",
            "model_name": f"{t}-m",
            "adapter_path": None,
            "evaluation": None,
            "error": None,
        }
        pipe = self.store.pipeline()
        pipe.set(keys.PLAIN_KEYSPACE.job(job["id"]), orjson.dumps(job))
        pipe.zadd(keys.PLAIN_KEYSPACE.jobs, {job["id"]: time.time()})
        pipe.execute()

    # -- helpers ---------------------------------------------------------------------

    def login(self, key: str, origin: str | None = "self", **headers: str) -> httpx.Response:
        h = {"content-type": "application/x-www-form-urlencoded", **headers}
        if origin is not None:
            h["origin"] = self.url if origin == "self" else origin
        return self.http.post("/ui/login", headers=h, content=f"key={key}", follow_redirects=False)

    def session(self, key: str) -> httpx.Client:
        r = self.login(key)
        if r.status_code != 303 or "fw_console" not in r.cookies:
            raise RuntimeError(f"set-up login: {r.status_code} {r.text[:200]}")
        c = httpx.Client(base_url=self.url, timeout=30)
        c.cookies.set("fw_console", r.cookies["fw_console"], path="/ui")
        return c

    def csrf(self, c: httpx.Client, page: str = "/ui/review") -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', c.get(page).text)
        return m.group(1) if m else ""

    def post_form(
        self, c: httpx.Client, path: str, fields: dict[str, str], origin: str | None = "self"
    ) -> httpx.Response:
        h = {"content-type": "application/x-www-form-urlencoded"}
        if origin is not None:
            h["origin"] = self.url if origin == "self" else origin
        return c.post(path, headers=h, content=httpx.QueryParams(fields).__str__())

    def experiment(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.root("GET", f"/admin/experiments/{name}").json()
        return doc

    # -- tenant isolation --------------------------------------------------------------

    def isolation(self) -> None:
        check = self.tally.check
        a = ISOLATION
        admin = bearer(self.secret("acme-admin"))
        reviewer = bearer(self.secret("acme-reviewer"))
        client = bearer(self.secret("acme-app"))
        g_texts = TEXTS["globex"]
        g_rid = self.rids["globex"][0]
        g_key = self.k["globex-app"]["id"]
        before = self.experiment("globex-exp")

        # the console, as acme's admin (a bearer key) and as its session cookie
        cookie = self.session(self.secret("acme-admin"))
        for how, get in (
            ("bearer", lambda p: self.http.get(p, headers=admin)),
            ("session", lambda p: cookie.get(p)),
        ):
            r = get("/ui/experiments/globex-exp")
            check(a, f"console ({how}): globex's experiment page", r.status_code == 404)
            r = get("/ui/")
            check(a, f"console ({how}): overview lists globex", "globex-exp" not in r.text)
            r = get("/ui/interactions")
            check(a, f"console ({how}): globex's interactions listed", not leaks(r, *g_texts))
            r = get(f"/ui/interactions/{g_rid}")
            check(a, f"console ({how}): globex's interaction", r.status_code == 404)
            r = get("/ui/review")
            check(a, f"console ({how}): globex's review queue", g_rid not in r.text)
            r = get("/ui/review/next?experiment=globex-exp")
            check(a, f"console ({how}): globex's next review item", g_rid not in r.text)
            r = get("/ui/datasets")
            check(a, f"console ({how}): globex's datasets listed", "globex-v1" not in r.text)
            r = get("/ui/datasets/globex-exp/globex-v1/train.jsonl")
            check(
                a,
                f"console ({how}): globex's train.jsonl",
                r.status_code == 404 and not leaks(r, *g_texts),
            )
            r = get("/ui/jobs")
            check(a, f"console ({how}): globex's jobs", "ftjob-globex" not in r.text)
        token = self.csrf(cookie)
        r = self.post_form(
            cookie,
            "/ui/review/save",
            {"csrf": token, "experiment": "globex-exp", "id": g_rid, "action": "dismiss"},
        )
        item = orjson.loads(
            self.store.hget(keys.PLAIN_KEYSPACE.review("globex-exp"), g_rid) or b"{}"
        )
        check(a, "console: dismiss globex's review item", not item.get("dismissed"))
        version = before["version"]
        for action in ("ramp", "promote", "rollback"):
            fields = {
                "csrf": token,
                "experiment": "globex-exp",
                "action": action,
                "model": "shared-m",
                "weight": "50",
                "version": str(version),
            }
            r = self.post_form(cookie, "/ui/actions/confirm", fields)
            check(a, f"console: confirm a {action} of globex's experiment", r.status_code == 404)
            self.post_form(cookie, "/ui/actions/apply", fields)
            after = self.experiment("globex-exp")
            check(
                a, f"console: apply a {action} to globex's experiment", after["version"] == version
            )

        # the console as acme's reviewer
        rc = self.session(self.secret("acme-reviewer"))
        for how, get in (
            ("bearer", lambda p: self.http.get(p, headers=reviewer)),
            ("session", lambda p: rc.get(p)),
        ):
            r = get("/ui/interactions")
            check(a, f"console reviewer ({how}): globex's interactions", not leaks(r, *g_texts))
            r = get(f"/ui/interactions/{g_rid}")
            check(a, f"console reviewer ({how}): globex's interaction", r.status_code == 404)
            r = get("/ui/review")
            check(a, f"console reviewer ({how}): globex's review queue", g_rid not in r.text)
            r = get("/ui/experiments/globex-exp")
            check(a, f"console reviewer ({how}): an experiment page", r.status_code in (403, 404))

        # the admin API as acme's admin
        version = self.experiment("globex-exp")["version"]
        for method, path, body in (
            ("GET", "/admin/experiments/globex-exp", None),
            ("GET", "/admin/experiments/globex-exp/history", None),
            ("GET", "/admin/experiments/globex-exp/report", None),
            ("POST", "/admin/experiments/globex-exp/arms", {"model": "shared-m", "weight": 1}),
            ("POST", "/admin/experiments/globex-exp/promote", {"model": "shared-m"}),
            ("POST", "/admin/experiments/globex-exp/rollback", {}),
            ("GET", "/admin/models/globex-m", None),
            ("DELETE", "/admin/models/globex-m", None),
            ("GET", f"/admin/keys/{g_key}", None),
            ("PATCH", f"/admin/keys/{g_key}", {"rpm": 1}),
            ("POST", f"/admin/keys/{g_key}/rotate", None),
            ("DELETE", f"/admin/keys/{g_key}", None),
            ("GET", "/admin/tenants/globex", None),
        ):
            r = self.http.request(method, path, headers=admin, json=body)
            check(a, f"admin API: {method} {path}", r.status_code == 404)
        r = self.http.put(
            "/admin/experiments/globex-exp", headers=admin, json={"arms": [{"model": "acme-m"}]}
        )
        check(a, "admin API: PUT over globex's experiment", r.status_code in (404, 409))
        check(
            a,
            "admin API: globex's experiment unchanged",
            self.experiment("globex-exp")["version"] == version,
        )
        r = self.http.put("/admin/tenants/globex", headers=admin, json={"budget": None})
        check(a, "admin API: PUT globex's tenant policy", r.status_code in (403, 404))
        for path, names in (
            ("/admin/experiments", ["globex-exp"]),
            ("/admin/models", ["globex-m"]),
            ("/admin/keys", [g_key]),
            ("/admin/audit", [g_key]),
        ):
            r = self.http.get(path, headers=admin)
            check(a, f"admin API: {path} lists globex's", not leaks(r, *names))
        for path, body in (
            ("/admin/keys", {"name": "mole", "tenant": "globex", "role": "admin"}),
            (
                "/admin/models",
                {"name": "mole-m", "upstream": "fixed", "model": "fixed-a", "tenant": "globex"},
            ),
        ):
            r = self.http.post(path, headers=admin, json=body)
            check(a, f"admin API: create in globex at {path}", r.status_code == 403)

        # cross-tenant references
        for name, body in (
            ("acme-steal", {"arms": [{"model": "globex-m"}]}),
            (
                "acme-shadow",
                {"arms": [{"model": "acme-m"}], "shadow": {"model": "globex-m", "share": 1.0}},
            ),
            ("acme-fallback", {"arms": [{"model": "acme-m"}], "fallback": "globex-m"}),
        ):
            r = self.http.put(f"/admin/experiments/{name}", headers=admin, json=body)
            unknown = self.http.put(
                f"/admin/experiments/{name}",
                headers=admin,
                json=orjson.loads(orjson.dumps(body).replace(b"globex-m", b"nosuch-m")),
            )
            check(a, f"reference: {name} names globex's model", r.status_code >= 400)
            check(
                a,
                f"reference: {name} answered unlike an unknown model",
                (r.status_code, neutral(r.text, "globex-m"))
                == (unknown.status_code, neutral(unknown.text, "nosuch-m")),
            )
        r = self.http.post(
            "/admin/experiments/acme-exp/arms",
            headers=admin,
            json={"model": "globex-m", "weight": 1},
        )
        check(a, "reference: an arm of globex's model added", r.status_code >= 400)
        time.sleep(1.2)
        r = self.http.post(
            "/v1/chat/completions",
            headers=client,
            json={"model": "acme-steal", "messages": [{"role": "user", "content": "hi"}]},
        )
        check(a, "reference: acme's client answered by globex's model", r.status_code != 200)
        r = self.http.get("/admin/models/globex-m", headers=bearer(self.secret("globex-admin")))
        check(a, "names: globex's model lists acme's experiments", "acme-" not in r.text)
        r = self.http.get("/admin/models/shared-m", headers=admin)
        check(a, "names: a shared model lists globex's experiments", "globex-exp" not in r.text)

        # names: another tenant's name is answered like a taken or an unknown one
        for what, theirs, mine in (
            (
                "experiment over a model name",
                ("PUT", "/admin/experiments/globex-m"),
                ("PUT", "/admin/experiments/acme-m"),
            ),
            ("model over a model name", ("POST", "globex-m"), ("POST", "acme-m")),
            ("model over an experiment name", ("POST", "globex-exp"), ("POST", "acme-exp")),
        ):
            answers = []
            for method, target in (theirs, mine):
                if method == "PUT":
                    r = self.http.put(target, headers=admin, json={"arms": [{"model": "acme-m"}]})
                else:
                    r = self.http.post(
                        "/admin/models",
                        headers=admin,
                        json={"name": target, "upstream": "fixed", "model": "fixed-a"},
                    )
                answers.append(
                    (r.status_code, neutral(r.text, "globex-m", "acme-m", "globex-exp", "acme-exp"))
                )
            check(
                a,
                f"names: {what} of globex answered otherwise than acme's own",
                answers[0] == answers[1],
            )

        # the public API as acme's client
        def chat(model: str) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            return self.http.post("/v1/chat/completions", headers=client, json=body)

        unknown = chat("nosuch-m")
        for model in ("globex-exp", "globex-m"):
            r = chat(model)
            check(
                a,
                f"public API: chat with {model} answered unlike an unknown model",
                (r.status_code, neutral(r.text, model))
                == (unknown.status_code, neutral(unknown.text, "nosuch-m")),
            )
        r = self.http.get("/v1/models", headers=client)
        check(a, "public API: /v1/models lists globex's", not leaks(r, "globex"))
        r = self.http.post(
            "/v1/feedback", headers=client, json={"response_id": g_rid, "rating": "up"}
        )
        check(a, "public API: rate globex's answer", r.status_code == 404)
        r = self.http.get(f"/v1/feedback/{g_rid}", headers=client)
        check(a, "public API: read globex's ratings", r.status_code == 404)

    # -- console sessions and login ------------------------------------------------------

    def sessions(self) -> None:
        check = self.tally.check
        a = SESSIONS
        port = self.gw.port
        key = self.secret("acme-reviewer")
        for what, origin, extra in (
            ("Origin: null", "null", {}),
            ("another port", f"http://127.0.0.1:{port + 1}", {}),
            ("https on an http gateway", f"https://127.0.0.1:{port}", {}),
            ("another host", f"http://evil.example:{port}", {}),
            ("Sec-Fetch-Site: cross-site", None, {"sec-fetch-site": "cross-site"}),
        ):
            r = self.login(key, origin, **extra)
            check(a, f"login CSRF: {what}", "fw_console" not in r.cookies)
        ok = self.login(key)
        check(a, "login from the console's own page works", "fw_console" in ok.cookies)
        one, two = self.login(key), self.login(key)
        check(
            a,
            "two logins in the same second share a cookie",
            one.cookies.get("fw_console") != two.cookies.get("fw_console"),
        )

        # forms with a foreign origin, logged in
        admin_key = self.key("acme-ops2", "acme", "admin")["key"]
        time.sleep(1.0)
        c = self.session(admin_key)
        token = self.csrf(c)
        version = self.experiment("acme-exp")["version"]
        fields = {
            "csrf": token,
            "experiment": "acme-exp",
            "action": "ramp",
            "model": "shared-m",
            "weight": "1",
            "version": str(version),
        }
        for what, origin in (
            ("null", "null"),
            ("another port", f"http://127.0.0.1:{port + 1}"),
            ("https", f"https://127.0.0.1:{port}"),
        ):
            version = self.experiment("acme-exp")["version"]
            self.post_form(c, "/ui/actions/apply", {**fields, "version": str(version)}, origin)
            check(
                a,
                f"form with Origin {what} applied",
                self.experiment("acme-exp")["version"] == version,
            )

        # a key that loses its standing loses its session
        def lost(what: str, change: Callable[[str], None], wait_s: float = 0.0) -> None:
            made = self.key(
                f"acme-{what}",
                "acme",
                "admin",
                **({"expires_at": time.time() + 2} if what == "expired" else {}),
            )
            time.sleep(1.0)  # every worker knows the new key
            c = self.session(made["key"])
            token = self.csrf(c)
            assert token, f"no CSRF token for {what}"
            change(made["id"])
            time.sleep(wait_s)
            # Every worker follows the live state within refresh_s (0.5 s here): one second
            # after the change the API refuses the key on every worker, and so must the
            # console (the finding: 2 s after a revoke, a console ramp applied).
            time.sleep(1.0)
            api = self.http.get("/admin/experiments", headers=bearer(made["key"]))
            check(a, f"{what} key: the API still answers it", api.status_code in (401, 403))
            v = self.experiment("acme-exp")["version"]
            f = {**fields, "csrf": token, "version": str(v)}
            self.post_form(c, "/ui/actions/apply", f)
            check(
                a, f"{what} key: console ramp applied", self.experiment("acme-exp")["version"] == v
            )
            r = c.get("/ui/experiments/acme-exp", follow_redirects=False)
            check(a, f"{what} key: console page served", r.status_code != 200)

        lost("revoked", lambda kid: self.root("DELETE", f"/admin/keys/{kid}") and None)
        lost("rotated", lambda kid: self.root("POST", f"/admin/keys/{kid}/rotate") and None)
        lost("expired", lambda kid: None, wait_s=2.2)
        lost(
            "demoted",
            lambda kid: self.root("PATCH", f"/admin/keys/{kid}", json={"role": "client"}) and None,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="The hostile-tenant exercise")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis")
        upstream = FaultyUpstream()
        datasets = Path(tmp) / "datasets"
        gw: GatewayProcess | None = None
        try:
            server.start()
            upstream.start()
            gw = GatewayProcess(
                {
                    "redis_url": server.url,
                    "id_secret": ID_SECRET,
                    "auth": {"admin_keys": [{"key": ROOT_KEY, "name": "root"}]},
                    "upstreams": {
                        "fixed": {"kind": "vllm", "base_url": upstream.base_url, "timeout_s": 5}
                    },
                    "models": {"fixed-a": {"upstream": "fixed", "model": "fixed-a"}},
                    "experiments": {},
                    "retrain": {"dataset_dir": str(datasets)},
                    "control": {"refresh_s": 0.5},
                },
                Path(tmp) / "gw",
                workers=args.workers,
            )
            gw.start(timeout=120)  # a busy machine starts two workers slowly
            ex = Exercise(gw, redis.Redis(port=server.port), datasets)
            ex.setup()
            ex.isolation()
            ex.sessions()
        finally:
            if gw is not None:
                gw.stop()
            upstream.stop()
            server.stop()
    t = ex.tally
    rows = [[area, str(n), str(len(t.failures.get(area, [])))] for area, n in t.attempts.items()]
    print(table(["area", "attempts", "failures"], rows))
    if args.verbose:
        for area, fails in t.failures.items():
            for f in fails:
                print(f"FAILED  {area}: {f}")
    return 1 if t.failures else 0


if __name__ == "__main__":
    sys.exit(main())
