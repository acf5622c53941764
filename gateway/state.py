"""What the lifespan opens and handlers use: the app's typed state (``app.state.gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request

from gateway.control.control import Control
from gateway.core import keys
from gateway.core.auth import KeyRing
from gateway.core.config import Settings
from gateway.serving.chat import ChatService
from gateway.serving.feedback import FeedbackService
from gateway.serving.metrics import Metrics
from gateway.serving.upstream import UpstreamClient


@dataclass
class GatewayState:
    settings: Settings
    metrics: Metrics
    redis: aioredis.Redis
    ks: keys.Keyspace  # the key names, built once from the config (one Redis or a cluster)
    upstream: UpstreamClient
    control: Control
    keyring: KeyRing
    chat: ChatService
    feedback: FeedbackService
    started: int
    draining: bool = False
    redis_url: str = ""  # where the sync clients (archiver, forget) connect


def app_state(app: Starlette) -> GatewayState:
    """The typed state the lifespan built (what handlers and the drain read)."""
    st: GatewayState = app.state.gateway
    return st


def state(request: Request) -> GatewayState:
    """The typed state of the app serving ``request``: every handler's one way in."""
    return app_state(request.app)
