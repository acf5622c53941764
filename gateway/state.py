"""What the lifespan opens and handlers use: the app's typed state (``app.state.gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import Request

from gateway.control.control import Control
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
    upstream: UpstreamClient
    control: Control
    keyring: KeyRing
    chat: ChatService
    feedback: FeedbackService
    started: int
    draining: bool = False
    redis_url: str = ""  # where the sync clients (archiver, forget) connect


def state(request: Request) -> GatewayState:
    st: GatewayState = request.app.state.gateway
    return st
