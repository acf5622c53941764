"""The vLLM-backed gateway of a data-path module, on one Redis or on the cluster.

A module whose tests talk to the tiny model through a gateway and read what it stored
takes :func:`session_store` (one Redis: the session gateway's own database, left as it
is, since that gateway keeps its state there; the cluster: flushed) and
:func:`served_on` (one Redis: the session ``gateway``; the cluster: a gateway of its own
with the same config, stopped when the module ends), each in a module-scoped fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import openai
import pytest

from flywheel_stack import VLLMServer

from .conftest import API_KEY, gateway_config
from .faulty_upstream import FaultyUpstream
from .services import GatewayProcess
from .stores import Store, store_for


@dataclass(frozen=True)
class Served:
    gateway: GatewayProcess
    client: openai.OpenAI  # the official client, with the tests' API key
    store: Store  # what the gateway stores into, as a test reads it


def session_store(request: pytest.FixtureRequest) -> Store:
    """The store of a module's ``params=STORES`` fixture: the session's one Redis
    (database 0, where the session ``gateway`` lives: not flushed), or the cluster."""
    if request.param == "cluster":
        return store_for(request, 0)
    server = request.getfixturevalue("redis_server")
    return Store(server.url, False, (server.port,))


@contextmanager
def served_on(
    request: pytest.FixtureRequest, store: Store, vllm: VLLMServer, faulty: FaultyUpstream
) -> Iterator[Served]:
    """The gateway in front of the session's vLLM on ``store``, and a client for it.

    The module fixture names ``vllm`` and ``faulty`` itself, so its tests carry the
    ``vllm`` marker."""
    own: GatewayProcess | None = None
    if store.cluster:
        own = GatewayProcess(
            gateway_config(vllm.base_url, faulty.base_url, store.url, redis_cluster=True),
            request.getfixturevalue("tmp_path_factory").mktemp("gateway-cluster"),
        ).start()
        gw = own
    else:
        gw = request.getfixturevalue("gateway")
    try:
        with openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0) as client:
            yield Served(gw, client, store)
    finally:
        if own is not None:
            own.stop()
