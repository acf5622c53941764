"""A gateway in front of a scripted upstream, with the retrain config that the gate's
tests read: the models' answers are the test's to decide (``tests/scripted_upstream.py``),
the gate and its token counts are the real ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.core.config import load_settings
from retrain.config import RetrainSettings
from retrain.gateway_client import Gateway

from .conftest import ADMIN_KEY, API_KEY, ID_SECRET
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess


@dataclass
class Served:
    gateway: GatewayProcess
    upstream: ScriptedUpstream
    config: Path  # the gateway's config with a retrain section, as retrain reads it
    settings: RetrainSettings
    client: Gateway


@contextmanager
def served_gate(
    upstream: ScriptedUpstream,
    redis_url: str,
    workdir: Path,
    upstreams: dict[str, Any],
    models: dict[str, Any],
    default_model: str,
) -> Iterator[Served]:
    """The gateway (``upstreams`` and ``models`` as configured, an experiment ``default``
    on ``default_model``), its config plus a ``retrain`` section (at least 10 examples
    for the gate), and a client as ``retrain`` makes it. Stops the gateway and
    ``upstream`` afterwards."""
    config = {
        "redis_url": redis_url,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops", "tenant": "tests"}],
        },
        "upstreams": upstreams,
        "models": models,
        "experiments": {"default": {"arms": [{"model": default_model}]}},
    }
    gw = GatewayProcess(config, workdir)
    try:
        gw.start()
        doc = yaml.safe_load(gw.config_path.read_text())
        doc["retrain"] = {
            "gateway_url": gw.url,
            "gateway_key": API_KEY,
            "admin_key": ADMIN_KEY,
            "eval": {"min_examples": 10},
        }
        path = workdir / "retrain.yaml"
        path.write_text(yaml.safe_dump(doc))
        settings = load_settings(path, schema=RetrainSettings)
        client = Gateway(settings)
        try:
            yield Served(gw, upstream, path, settings, client)
        finally:
            client.http.close()
    finally:
        gw.stop()
        upstream.stop()
