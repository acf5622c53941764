"""The admin API (admin key): experiments as live state, runtime models, reports.

::

    GET    /admin/experiments                      every experiment's live state
    GET    /admin/experiments/{name}               one
    PUT    /admin/experiments/{name}               create or replace (arms, weights, ...)
    POST   /admin/experiments/{name}/arms          add an arm {"model", "weight"}
    POST   /admin/experiments/{name}/promote       {"model"}: it gets 100%, others 0
    POST   /admin/experiments/{name}/rollback      back to the state before the last change
    GET    /admin/experiments/{name}/history       audit log: who, when, before, after
    GET    /admin/experiments/{name}/report        per-arm statistics and the decision
    GET    /admin/models                           config and registered model versions
    GET    /admin/models/{name}                    one, with its lineage and experiments
    POST   /admin/models                           register {"name", "upstream", ...}
    DELETE /admin/models/{name}                    unregister (and unload the adapter)

The logic lives in :mod:`gateway.control` and its modules; this module only authenticates, reads
bodies and renders JSON. Names may hold ``/`` (``team/support``): see
:class:`ExperimentName`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from .bodies import json_object, read_body
from .control import Control


class ExperimentName(Convertor[str]):
    """A name that may hold ``/``, but does not end in a sub-resource: ``a/history`` is
    experiment ``a``'s history, so ``PUT /admin/experiments/a/history`` is a 405, not an
    experiment named ``a/history``."""

    regex = r".+?" + "".join(
        f"(?<!/{s})" for s in ("arms", "promote", "rollback", "history", "report")
    )

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("experiment", ExperimentName())


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def add_admin_routes(app: FastAPI) -> None:
    def admin(request: Request) -> tuple[Control, str]:
        st = request.app.state.gateway
        principal = st.chat.keyring.authenticate_admin(request.headers.get("authorization"))
        return st.control, principal.name

    async def body(request: Request) -> dict[str, Any]:
        limit = request.app.state.gateway.settings.limits.max_body_bytes
        return json_object(await read_body(request, limit))

    @app.get("/admin/experiments")
    async def list_experiments(request: Request) -> Response:
        control, _ = admin(request)
        return _json({"object": "list", "data": await control.experiments.states()})

    @app.post("/admin/experiments/{name:experiment}/arms")
    async def add_arm(request: Request, name: str) -> Response:
        control, who = admin(request)
        return _json(await control.experiments.add_arm(name, await body(request), who))

    @app.post("/admin/experiments/{name:experiment}/promote")
    async def promote(request: Request, name: str) -> Response:
        control, who = admin(request)
        return _json(await control.experiments.promote(name, await body(request), who))

    @app.post("/admin/experiments/{name:experiment}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        control, who = admin(request)
        return _json(await control.experiments.rollback(name, who))

    @app.get("/admin/experiments/{name:experiment}/history")
    async def history(request: Request, name: str) -> Response:
        control, _ = admin(request)
        data = await control.experiments.history(name)
        return _json({"object": "list", "experiment": name, "data": data})

    @app.get("/admin/experiments/{name:experiment}/report")
    async def report(request: Request, name: str) -> Response:
        control, _ = admin(request)
        return _json(await control.report(name))

    @app.get("/admin/experiments/{name:experiment}")
    async def get_experiment(request: Request, name: str) -> Response:
        control, _ = admin(request)
        return _json(await control.experiments.state(name))

    @app.put("/admin/experiments/{name:experiment}")
    async def put_experiment(request: Request, name: str) -> Response:
        control, who = admin(request)
        return _json(await control.experiments.put(name, await body(request), who))

    @app.get("/admin/models")
    async def list_models(request: Request) -> Response:
        control, _ = admin(request)
        return _json({"object": "list", "data": control.models()})

    @app.post("/admin/models")
    async def register_model(request: Request) -> Response:
        control, who = admin(request)
        return _json(await control.registry.register(await body(request), who), status=201)

    @app.get("/admin/models/{name:path}")
    async def get_model(request: Request, name: str) -> Response:
        control, _ = admin(request)
        return _json(control.registry.model(name))

    @app.delete("/admin/models/{name:path}")
    async def remove_model(request: Request, name: str) -> Response:
        control, who = admin(request)
        return _json(await control.registry.remove(name, who))
