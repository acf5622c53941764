"""What the lifespan opens and handlers use: the app's typed state (``app.state.gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import Request

from .auth import KeyRing
from .chat import ChatService
from .config import Settings
from .control import Control
from .feedback import FeedbackService
from .metrics import Metrics
from .upstream import UpstreamClient


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
