"""The admin API (admin key): experiments as live state, runtime models, reports.

::

    GET    /admin/experiments                      every experiment's live state
    GET    /admin/experiments/{name}               one
    PUT    /admin/experiments/{name}               create or replace (arms, weights, ...)
    POST   /admin/experiments/{name}/arms          add an arm {"model", "weight"}
    POST   /admin/experiments/{name}/promote       {"model"}: it gets 100%, others 0
    POST   /admin/experiments/{name}/rollback      back to the state before the last change
    POST   /admin/experiments/{name}/resume        automatic decisions again, after a
                                                   person's change paused them
    GET    /admin/experiments/{name}/history       audit log: who, when, before, after
    GET    /admin/experiments/{name}/report        per-arm statistics and the decision;
           ?since=YYYY-MM-DD[&until=YYYY-MM-DD]    per-arm statistics over those days, from
                                                   the archive (archive_query.window_report)
    GET    /admin/models                           config and registered model versions
    GET    /admin/models/{name}                    one, with its lineage and experiments
    POST   /admin/models                           register {"name", "upstream", ...}
    DELETE /admin/models/{name}                    unregister (and unload the adapter)
    GET    /admin/keys                             runtime API keys (never their secrets)
    POST   /admin/keys                             create one: the secret is shown once
    GET    /admin/keys/{id}                        one
    PATCH  /admin/keys/{id}                        change limits, budget, scope, expiry
    DELETE /admin/keys/{id}                        revoke (every replica within a second)
    POST   /admin/keys/{id}/rotate                 a new secret; the old one stops now
    GET    /admin/tenants/{tenant}                 a tenant's policy (budget)
    PUT    /admin/tenants/{tenant}                 set it (an admin of every tenant)
    GET    /admin/audit                            who changed which key or tenant, when
    DELETE /admin/users/{user}[?tenant=T]          forget a user (:mod:`gateway.ops.forget`)

Tenancy is :mod:`gateway.core.access`'s one rule: an admin key of one tenant sees only
that tenant's experiments, models and keys and the shared ones (others are a 404, as if
absent), changes only its tenant's (shared ones are a 403), and what it creates belongs
to its tenant; an admin of every tenant may create shared ones (no ``tenant``). A name
held by another tenant is answered like any taken name (409), and an experiment names
only its tenant's and shared models (another tenant's is an unknown model).

The logic lives in :mod:`gateway.control.control` and its modules; this module only
authenticates, reads bodies and renders JSON. Names hold no ``/``
(:data:`gateway.core.config.NAME_PATTERN`); :class:`ExperimentName` still takes a path
with one, so that such a name is a 400 naming it rather than an unknown route.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from gateway.control.control import Control
from gateway.core import access
from gateway.core.auth import Principal
from gateway.core.errors import InvalidRequest, PermissionDenied
from gateway.core.params import check_workload_window, checked_day, checked_workload
from gateway.ops import archive_query
from gateway.ops.forget import forget_user
from gateway.serving.bodies import json_object, read_body
from gateway.state import state as gateway_state


class ExperimentName(Convertor[str]):
    """A name that may hold ``/``, but does not end in a sub-resource: ``a/history`` is
    experiment ``a``'s history, so ``PUT /admin/experiments/a/history`` is a 405, not an
    experiment named ``a/history``."""

    regex = r".+?" + "".join(
        f"(?<!/{s})" for s in ("arms", "promote", "rollback", "resume", "history", "report")
    )

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("experiment", ExperimentName())


class UserId(Convertor[str]):
    """Any user id, ``/`` and line breaks included: what is wrong with one is a 400 that
    says so (:func:`gateway.ops.forget.valid_user`), never a 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("user_id", UserId())


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _owned(doc: Any, by: Principal, kind: access.Kind) -> Any:
    """A body that creates something: it belongs to the tenant it names (a tenant's
    admin: its own tenant, the default), if the key may create for that tenant."""
    if not isinstance(doc, dict):
        return doc
    tenant = doc.get("tenant", None if by.all_tenants else by.tenant)
    if tenant is not None and not isinstance(tenant, str):
        return doc  # the schema names what is wrong with it
    access.check(by, "create", access.Resource(kind, str(doc.get("name") or ""), tenant))
    return doc if by.all_tenants and "tenant" not in doc else {**doc, "tenant": tenant}


def _no_file_for_a_tenant(doc: Any, by: Principal) -> None:
    """In-context examples named by a path are read from the gateway's own disk, where
    other tenants' datasets may lie: only an admin of every tenant may name one (the
    operator's config may too); a tenant's admin sends the examples themselves."""
    ctx = doc.get("in_context") if isinstance(doc, dict) else None
    if not by.all_tenants and isinstance(ctx, dict) and isinstance(ctx.get("examples"), str):
        raise PermissionDenied(
            "in_context.examples: a file on the gateway's machine may be named only by an "
            "admin of every tenant; send the examples as a list of {user, assistant} pairs",
            param="in_context.examples",
            code="file_not_allowed",
        )


def add_admin_routes(app: FastAPI) -> None:
    def principal(request: Request) -> tuple[Control, Principal]:
        st = gateway_state(request)
        by = st.keyring.authenticate_admin(request.headers.get("authorization"))
        return st.control, by

    def experiment_of(control: Control, name: str) -> access.Resource:
        exp = control.router.experiments.get(name)
        return access.Resource("experiment", name, exp.tenant if exp else access.NOBODY)

    def admin(
        request: Request, experiment: str | None = None, change: bool = False
    ) -> tuple[Control, str]:
        control, by = principal(request)
        if experiment is not None:
            access.check(by, "change" if change else "see", experiment_of(control, experiment))
        return control, by.name

    async def body(request: Request) -> dict[str, Any]:
        limit = gateway_state(request).settings.limits.max_body_bytes
        return json_object(await read_body(request, limit))

    @app.get("/admin/experiments")
    async def list_experiments(request: Request) -> Response:
        control, by = principal(request)
        states = await control.experiments.states()
        data = [
            s
            for s in states
            if access.allows(
                by, "see", access.Resource("experiment", s["name"], s["spec"].get("tenant"))
            )
        ]
        return _json({"object": "list", "data": data})

    @app.post("/admin/experiments/{name:experiment}/arms")
    async def add_arm(request: Request, name: str) -> Response:
        control, who = admin(request, name, change=True)
        return _json(await control.experiments.add_arm(name, await body(request), who))

    @app.post("/admin/experiments/{name:experiment}/promote")
    async def promote(request: Request, name: str) -> Response:
        control, who = admin(request, name, change=True)
        return _json(await control.experiments.promote(name, await body(request), who))

    @app.post("/admin/experiments/{name:experiment}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        control, who = admin(request, name, change=True)
        return _json(await control.experiments.rollback(name, who))

    @app.post("/admin/experiments/{name:experiment}/resume")
    async def resume(request: Request, name: str) -> Response:
        control, who = admin(request, name, change=True)
        return _json(await control.experiments.resume(name, who))

    @app.get("/admin/experiments/{name:experiment}/history")
    async def history(request: Request, name: str) -> Response:
        control, _ = admin(request, name)
        data = await control.experiments.history(name)
        return _json({"object": "list", "experiment": name, "data": data})

    @app.get("/admin/experiments/{name:experiment}/report")
    async def report(request: Request, name: str) -> Response:
        control, _ = admin(request, name)
        since = checked_day(request.query_params.get("since"), "since", blank=False)
        until = checked_day(request.query_params.get("until"), "until", blank=False)
        workload = checked_workload(request.query_params.get("workload"), blank=False)
        check_workload_window(workload, since, until, "'since'")
        if since is None and until is None:
            return _json(await control.report(name))
        state = await control.experiments.state(name)
        settings = gateway_state(request).settings
        return _json(await archive_query.windowed(settings, state, since, until, workload))

    @app.get("/admin/experiments/{name:experiment}")
    async def get_experiment(request: Request, name: str) -> Response:
        control, _ = admin(request, name)
        return _json(await control.experiments.state(name))

    @app.put("/admin/experiments/{name:experiment}")
    async def put_experiment(request: Request, name: str) -> Response:
        control, by = principal(request)
        current = experiment_of(control, name)
        if name in control.router.experiments:
            if not access.allows(by, "see", current):
                raise access.name_taken(name)  # another tenant's: as taken as a model's name
            access.check(by, "change", current)
        doc = _owned(await body(request), by, "experiment")
        return _json(await control.experiments.put(name, doc, by.name))

    @app.get("/admin/models")
    async def list_models(request: Request) -> Response:
        control, by = principal(request)
        data = [
            m
            for m in control.models()
            if access.allows(by, "see", access.Resource("model", m["id"], m.get("tenant")))
        ]
        return _json({"object": "list", "data": data})

    def model_of(request: Request, name: str, change: bool = False) -> tuple[Control, Principal]:
        control, by = principal(request)
        model = control.router.models.get(name)
        res = access.Resource("model", name, model.tenant if model else access.NOBODY)
        if model is not None or not by.all_tenants:  # unknown: the registry's own 404
            access.check(by, "change" if change else "see", res)
        return control, by

    @app.post("/admin/models")
    async def register_model(request: Request) -> Response:
        control, by = principal(request)
        doc = _owned(await body(request), by, "model")
        _no_file_for_a_tenant(doc, by)
        return _json(await control.registry.register(doc, by.name), status=201)

    @app.get("/admin/models/{name:path}")
    async def get_model(request: Request, name: str) -> Response:
        control, by = model_of(request, name)
        return _json(control.registry.model(name, by))

    @app.delete("/admin/models/{name:path}")
    async def remove_model(request: Request, name: str) -> Response:
        control, by = model_of(request, name, change=True)
        return _json(await control.registry.remove(name, by.name))

    @app.get("/admin/keys")
    async def list_keys(request: Request) -> Response:
        control, by = principal(request)
        return _json({"object": "list", "data": await control.keys.all(by)})

    @app.post("/admin/keys")
    async def create_key(request: Request) -> Response:
        control, by = principal(request)
        return _json(await control.keys.create(await body(request), by), status=201)

    @app.get("/admin/keys/{key_id}")
    async def get_key(request: Request, key_id: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.get(key_id, by))

    @app.patch("/admin/keys/{key_id}")
    async def update_key(request: Request, key_id: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.update(key_id, await body(request), by))

    @app.delete("/admin/keys/{key_id}")
    async def revoke_key(request: Request, key_id: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.revoke(key_id, by))

    @app.post("/admin/keys/{key_id}/rotate")
    async def rotate_key(request: Request, key_id: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.rotate(key_id, by))

    @app.get("/admin/tenants/{tenant}")
    async def get_tenant(request: Request, tenant: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.tenant(tenant, by))

    @app.put("/admin/tenants/{tenant}")
    async def put_tenant(request: Request, tenant: str) -> Response:
        control, by = principal(request)
        return _json(await control.keys.set_tenant(tenant, await body(request), by))

    @app.get("/admin/audit")
    async def audit(request: Request) -> Response:
        control, by = principal(request)
        return _json({"object": "list", "data": await control.keys.audit(by)})

    @app.delete("/admin/users/{user:user_id}")
    async def forget(request: Request, user: str) -> Response:
        _, by = principal(request)
        # Destructive: a misspelt ``?tenant=`` must not widen a forget to every tenant.
        unknown = sorted(set(request.query_params) - {"tenant"})
        if unknown:
            raise InvalidRequest(
                f"unknown query parameter '{unknown[0]:.64}': only 'tenant' is accepted",
                param=unknown[0][:64],
            )
        tenant = request.query_params.get("tenant")
        return _json(await forget_user(gateway_state(request), user, tenant, by))
