"""The gateway's admin and chat APIs as the offline jobs use them (one client for all).

Every failure — an error answer, or no answer at all (refused, reset, timed out) — is a
:class:`GatewayUnavailable` naming the call: httpx's exceptions stop here.
"""

from __future__ import annotations

from typing import Any, cast

import httpx

from gateway.core.documents import ExperimentState, ModelDetail, ModelEntry

from .config import RetrainSettings
from .errors import GatewayUnavailable, UsageError


class _Transport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.TransportError as exc:
            raise GatewayUnavailable(
                f"gateway: {request.method} {request.url.path}: no answer from "
                f"{request.url.scheme}://{request.url.netloc.decode()} "
                f"({type(exc).__name__}: {exc})"
            ) from exc


class Gateway:
    """The gateway's admin and chat APIs, as the retrain job uses them."""

    def __init__(self, settings: RetrainSettings) -> None:
        cfg = settings.retrain
        admin = cfg.admin_key.get_secret_value()
        client = cfg.gateway_key.get_secret_value() or admin
        self.http = httpx.Client(
            base_url=cfg.gateway_url.rstrip("/"), timeout=120, transport=_Transport()
        )
        self.admin = {"Authorization": f"Bearer {admin}"} if admin else {}
        self.client = {"Authorization": f"Bearer {client}"} if client else {}
        self.max_tokens = cfg.eval.max_tokens

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> dict[str, Any]:
        if resp.is_error:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            raise GatewayUnavailable(
                f"gateway: {resp.request.method} {resp.request.url.path}: "
                f"HTTP {resp.status_code}: {message}"
            )
        doc: dict[str, Any] = resp.json()
        return doc

    def experiment(self, name: str) -> ExperimentState:
        return _state(self._check(self.http.get(f"/admin/experiments/{name}", headers=self.admin)))

    def teacher_experiment(self, name: str, teacher: str, who: str) -> ExperimentState:
        """Experiment ``name``, checked to have ``teacher`` as an arm: ``who`` (a student,
        a candidate) replaces its teacher, so it is canaried beside it (UsageError naming
        the arms if not)."""
        state = self.experiment(name)
        arms = [a["model"] for a in state["spec"]["arms"]]
        if teacher not in arms:
            raise UsageError(
                f"the teacher '{teacher}' is no arm of '{name}' (its arms: {', '.join(arms)}): "
                f"the {who} is canaried beside its teacher"
            )
        return state

    def register(self, body: dict[str, Any]) -> ModelEntry:
        doc = self._check(self.http.post("/admin/models", json=body, headers=self.admin))
        return cast(ModelEntry, doc)

    def model(self, name: str) -> ModelDetail:
        doc = self._check(self.http.get(f"/admin/models/{name}", headers=self.admin))
        return cast(ModelDetail, doc)

    def unregister(self, name: str) -> None:
        resp = self.http.delete(f"/admin/models/{name}", headers=self.admin)
        if resp.status_code != 404:
            self._check(resp)

    def add_arm(self, experiment: str, model: str, weight: float) -> ExperimentState:
        doc = self._check(
            self.http.post(
                f"/admin/experiments/{experiment}/arms",
                json={"model": model, "weight": weight},
                headers=self.admin,
            )
        )
        return _state(doc)

    def ask(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None = None) -> str:
        """One greedy (temperature 0) answer of ``model``; ``max_tokens`` defaults to
        ``retrain.eval.max_tokens``."""
        doc = self._check(
            self.http.post(
                "/v1/chat/completions",
                headers=self.client,
                json={
                    "model": model,
                    "messages": messages,
                    "temperature": 0,
                    "max_tokens": max_tokens or self.max_tokens,
                },
            )
        )
        return str(doc["choices"][0]["message"].get("content") or "")


def _state(doc: dict[str, Any]) -> ExperimentState:
    """The admin API's answer as an experiment's state, once it looks like one."""
    if doc.get("object") != "experiment" or not isinstance(doc.get("spec"), dict):
        raise GatewayUnavailable(f"gateway: not an experiment's state: {str(doc)[:200]}")
    return cast(ExperimentState, doc)
