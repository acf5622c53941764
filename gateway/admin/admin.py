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
from fastapi import Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from gateway import openapi as oa
from gateway.control.control import Control
from gateway.core import access
from gateway.core.auth import Principal
from gateway.core.config import NAME_MAX, NAME_PATTERN
from gateway.core.errors import InvalidRequest, PermissionDenied
from gateway.core.params import check_workload_window, checked_day, checked_workload
from gateway.openapi import Operation
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


def _principal(request: Request) -> tuple[Control, Principal]:
    st = gateway_state(request)
    by = st.keyring.authenticate_admin(request.headers.get("authorization"))
    return st.control, by


def _experiment_of(control: Control, name: str) -> access.Resource:
    exp = control.router.experiments.get(name)
    return access.Resource("experiment", name, exp.tenant if exp else access.NOBODY)


def _admin(request: Request, experiment: str, change: bool = False) -> tuple[Control, str]:
    """The admin key, allowed to see (or change) the experiment: the control and its name."""
    control, by = _principal(request)
    access.check(by, "change" if change else "see", _experiment_of(control, experiment))
    return control, by.name


def _model_of(request: Request, name: str, change: bool = False) -> tuple[Control, Principal]:
    control, by = _principal(request)
    model = control.router.models.get(name)
    res = access.Resource("model", name, model.tenant if model else access.NOBODY)
    if model is not None or not by.all_tenants:  # unknown: the registry's own 404
        access.check(by, "change" if change else "see", res)
    return control, by


async def _body(request: Request) -> dict[str, Any]:
    limit = gateway_state(request).settings.limits.max_body_bytes
    return json_object(await read_body(request, limit))


# Experiments


async def list_experiments(request: Request) -> Response:
    control, by = _principal(request)
    states = await control.experiments.states()
    data = [
        s
        for s in states
        if access.allows(
            by, "see", access.Resource("experiment", s["name"], s["spec"].get("tenant"))
        )
    ]
    return _json({"object": "list", "data": data})


async def get_experiment(request: Request, name: str) -> Response:
    control, _ = _admin(request, name)
    return _json(await control.experiments.state(name))


async def put_experiment(request: Request, name: str) -> Response:
    control, by = _principal(request)
    current = _experiment_of(control, name)
    if name in control.router.experiments:
        if not access.allows(by, "see", current):
            raise access.name_taken(name)  # another tenant's: as taken as a model's name
        access.check(by, "change", current)
    doc = _owned(await _body(request), by, "experiment")
    return _json(await control.experiments.put(name, doc, by.name))


async def add_arm(request: Request, name: str) -> Response:
    control, who = _admin(request, name, change=True)
    return _json(await control.experiments.add_arm(name, await _body(request), who))


async def promote(request: Request, name: str) -> Response:
    control, who = _admin(request, name, change=True)
    return _json(await control.experiments.promote(name, await _body(request), who))


async def rollback(request: Request, name: str) -> Response:
    control, who = _admin(request, name, change=True)
    return _json(await control.experiments.rollback(name, who))


async def resume(request: Request, name: str) -> Response:
    control, who = _admin(request, name, change=True)
    return _json(await control.experiments.resume(name, who))


async def history(request: Request, name: str) -> Response:
    control, _ = _admin(request, name)
    data = await control.experiments.history(name)
    return _json({"object": "list", "experiment": name, "data": data})


async def report(request: Request, name: str) -> Response:
    control, _ = _admin(request, name)
    since = checked_day(request.query_params.get("since"), "since", blank=False)
    until = checked_day(request.query_params.get("until"), "until", blank=False)
    workload = checked_workload(request.query_params.get("workload"), blank=False)
    check_workload_window(workload, since, until, "'since'")
    if since is None and until is None:
        return _json(await control.report(name))
    state = await control.experiments.state(name)
    settings = gateway_state(request).settings
    return _json(await archive_query.windowed(settings, state, since, until, workload))


# Models


async def list_models(request: Request) -> Response:
    control, by = _principal(request)
    data = [
        m
        for m in control.models()
        if access.allows(by, "see", access.Resource("model", m["id"], m.get("tenant")))
    ]
    return _json({"object": "list", "data": data})


async def register_model(request: Request) -> Response:
    control, by = _principal(request)
    doc = _owned(await _body(request), by, "model")
    _no_file_for_a_tenant(doc, by)
    return _json(await control.registry.register(doc, by.name), status=201)


async def get_model(request: Request, name: str) -> Response:
    control, by = _model_of(request, name)
    return _json(control.registry.model(name, by))


async def remove_model(request: Request, name: str) -> Response:
    control, by = _model_of(request, name, change=True)
    return _json(await control.registry.remove(name, by.name))


# Keys, tenants, the audit log


async def list_keys(request: Request) -> Response:
    control, by = _principal(request)
    return _json({"object": "list", "data": await control.keys.all(by)})


async def create_key(request: Request) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.create(await _body(request), by), status=201)


async def get_key(request: Request, key_id: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.get(key_id, by))


async def update_key(request: Request, key_id: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.update(key_id, await _body(request), by))


async def revoke_key(request: Request, key_id: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.revoke(key_id, by))


async def rotate_key(request: Request, key_id: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.rotate(key_id, by))


async def get_tenant(request: Request, tenant: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.tenant(tenant, by))


async def put_tenant(request: Request, tenant: str) -> Response:
    control, by = _principal(request)
    return _json(await control.keys.set_tenant(tenant, await _body(request), by))


async def audit(request: Request) -> Response:
    control, by = _principal(request)
    return _json({"object": "list", "data": await control.keys.audit(by)})


# Users


async def forget(request: Request, user: str) -> Response:
    _, by = _principal(request)
    # Destructive: a misspelt ``?tenant=`` must not widen a forget to every tenant.
    unknown = sorted(set(request.query_params) - {"tenant"})
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter '{unknown[0]:.64}': only 'tenant' is accepted",
            param=unknown[0][:64],
        )
    tenant = request.query_params.get("tenant")
    return _json(await forget_user(gateway_state(request), user, tenant, by))


EXP_NAME = oa.name_param("an experiment")
STATE = oa.answer(oa.ref("ExperimentState"))
ADMIN, BODY = oa.ADMIN, oa.BODY
WINDOW = tuple(
    {
        "name": q,
        "in": "query",
        "required": False,
        "description": f"{what} day of a window (UTC), read from the archive",
        "schema": {"type": "string", "format": "date"},
    }
    for q, what in (("since", "the first"), ("until", "the last"))
)
WORKLOAD = {
    "name": "workload",
    "in": "query",
    "required": False,
    "description": "with 'since': only the requests that named this workload "
    "(metadata.workload or x-flywheel-workload) and their ratings",
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64},
}
REPORT = {
    "type": "object",
    "anyOf": [
        {
            "required": ["decision", "arms"],
            "properties": {
                "arms": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["model", "language"],
                        "properties": {"language": oa.ref("ArmLanguage")},
                    },
                }
            },
        },
        {"required": ["archive", "arms"]},
    ],
}
USER = {
    "name": "user",
    "in": "path",
    "required": True,
    "description": "the user id (the requests' user or x-flywheel-user)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
FORGET_TENANT = {
    "name": "tenant",
    "in": "query",
    "required": False,
    "description": "only that tenant's user (default: the key's tenant; "
    "an admin of every tenant: every tenant)",
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX},
}

EXPERIMENT = "/admin/experiments/{name:experiment}"

ROUTES = (
    Operation(
        "GET",
        "/admin/experiments",
        list_experiments,
        "Every experiment's live state",
        {"200": oa.answer(oa.listing(oa.ref("ExperimentState"))), **oa.errors(*ADMIN)},
    ),
    Operation(
        "POST",
        f"{EXPERIMENT}/arms",
        add_arm,
        "Add an arm (e.g. a canary)",
        {"200": STATE, **oa.errors(*BODY, *ADMIN, 404, 409)},
        (EXP_NAME,),
        body=oa.body(oa.ref("Arm")),
    ),
    Operation(
        "POST",
        f"{EXPERIMENT}/promote",
        promote,
        "Give one arm 100, the others 0",
        {"200": STATE, **oa.errors(*BODY, *ADMIN, 404, 409)},
        (EXP_NAME,),
        body=oa.body(
            {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}}
        ),
    ),
    Operation(
        "POST",
        f"{EXPERIMENT}/rollback",
        rollback,
        "Back to the state before the last change",
        {"200": STATE, **oa.errors(400, *ADMIN, 404, 409)},
        (EXP_NAME,),
    ),
    Operation(
        "POST",
        f"{EXPERIMENT}/resume",
        resume,
        "Let the decider act again on an experiment a person's change paused",
        {"200": STATE, **oa.errors(*ADMIN, 404, 409)},
        (EXP_NAME,),
        description="Clears the pause (``pin``) with no new version, so the evidence "
        "collected since the pause counts; audited in the history. 409 when it is not "
        "paused or changed meanwhile.",
    ),
    Operation(
        "GET",
        f"{EXPERIMENT}/history",
        history,
        "The audit log of an experiment",
        {
            "200": oa.answer(
                oa.listing(
                    {"type": "object", "required": ["version", "action", "by"]},
                    experiment={"type": "string"},
                )
            ),
            **oa.errors(*ADMIN, 404),
        },
        (EXP_NAME,),
    ),
    Operation(
        "GET",
        f"{EXPERIMENT}/report",
        report,
        "Per-arm statistics, comparisons and the decision; with 'since', "
        "per-arm statistics over those days from the archive",
        {"200": oa.answer(REPORT), **oa.errors(400, *ADMIN, 404)},
        (EXP_NAME, *WINDOW, WORKLOAD),
    ),
    Operation(
        "GET",
        EXPERIMENT,
        get_experiment,
        "One experiment's live state",
        {"200": STATE, **oa.errors(*ADMIN, 404)},
        (EXP_NAME,),
    ),
    Operation(
        "PUT",
        EXPERIMENT,
        put_experiment,
        "Create or replace an experiment",
        {"200": STATE, **oa.errors(*BODY, *ADMIN, 409)},
        (EXP_NAME,),
        body=oa.body(oa.ref("Experiment"), "the experiment's new spec"),
    ),
    Operation(
        "GET",
        "/admin/models",
        list_models,
        "Model versions (config and registered)",
        {"200": oa.answer(oa.listing(oa.ref("AdminModel"))), **oa.errors(*ADMIN)},
    ),
    Operation(
        "POST",
        "/admin/models",
        register_model,
        "Register a model version (a LoRA adapter is loaded on every replica)",
        {"201": oa.answer(oa.ref("AdminModel"), "Registered"), **oa.errors(*BODY, *ADMIN, 409)},
        body=oa.body(oa.ref("RegisterModel")),
    ),
    Operation(
        "GET",
        "/admin/models/{name:path}",
        get_model,
        "One model version, with its lineage and experiments",
        {"200": oa.answer(oa.ref("AdminModel")), **oa.errors(*ADMIN, 404)},
        (oa.name_param("a model"),),
    ),
    Operation(
        "DELETE",
        "/admin/models/{name:path}",
        remove_model,
        "Remove a registered model version (and unload its adapter)",
        {
            "200": oa.answer(
                {
                    "type": "object",
                    "required": ["id", "deleted"],
                    "properties": {"deleted": {"const": True}},
                }
            ),
            **oa.errors(*ADMIN, 404, 409),
        },
        (oa.name_param("a registered model"),),
    ),
    Operation(
        "GET",
        "/admin/keys",
        list_keys,
        "Runtime API keys (an admin of one tenant: that tenant's)",
        {"200": oa.answer(oa.listing(oa.ref("ApiKey"))), **oa.errors(*ADMIN)},
    ),
    Operation(
        "POST",
        "/admin/keys",
        create_key,
        "Make a key: its secret is in this answer only",
        {"201": oa.answer(oa.ref("NewApiKey"), "Made"), **oa.errors(*BODY, *ADMIN)},
        body=oa.body(oa.ref("KeySpec")),
    ),
    Operation(
        "GET",
        "/admin/keys/{key_id}",
        get_key,
        "One key",
        {"200": oa.answer(oa.ref("ApiKey")), **oa.errors(*ADMIN, 404)},
        (oa.key_param(),),
    ),
    Operation(
        "PATCH",
        "/admin/keys/{key_id}",
        update_key,
        "Change a key's settings",
        {"200": oa.answer(oa.ref("ApiKey")), **oa.errors(*BODY, *ADMIN, 404, 409)},
        (oa.key_param(),),
        body=oa.body(oa.ref("KeyChange")),
    ),
    Operation(
        "DELETE",
        "/admin/keys/{key_id}",
        revoke_key,
        "Revoke a key: refused on every replica within a second",
        {"200": oa.answer(oa.ref("ApiKey")), **oa.errors(*ADMIN, 404, 409)},
        (oa.key_param(),),
    ),
    Operation(
        "POST",
        "/admin/keys/{key_id}/rotate",
        rotate_key,
        "A new secret for the key; the old one stops now",
        {"200": oa.answer(oa.ref("NewApiKey")), **oa.errors(*ADMIN, 404, 409)},
        (oa.key_param(),),
    ),
    Operation(
        "GET",
        "/admin/tenants/{tenant}",
        get_tenant,
        "A tenant's policy (its budget)",
        {"200": oa.answer(oa.ref("Tenant")), **oa.errors(400, *ADMIN, 404)},
        (oa.tenant_param(),),
    ),
    Operation(
        "PUT",
        "/admin/tenants/{tenant}",
        put_tenant,
        "Set a tenant's budget (an admin of every tenant)",
        {"200": oa.answer(oa.ref("Tenant")), **oa.errors(*BODY, *ADMIN, 404)},
        (oa.tenant_param(),),
        body=oa.body(oa.ref("TenantSpec")),
    ),
    Operation(
        "GET",
        "/admin/audit",
        audit,
        "Who changed which key or tenant, when, before and after",
        {"200": oa.answer(oa.listing(oa.AUDIT_ENTRY)), **oa.errors(*ADMIN)},
    ),
    Operation(
        "DELETE",
        "/admin/users/{user:user_id}",
        forget,
        "Forget a user: their interactions, ratings and archive rows, audited",
        {"200": oa.answer(oa.FORGOTTEN), **oa.errors(400, *ADMIN, 409)},
        (USER, FORGET_TENANT),
    ),
)
"""The admin API, in the order routes are matched."""
