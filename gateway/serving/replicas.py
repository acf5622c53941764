"""Upstream replicas: least-outstanding choice, a circuit breaker each, what each serves.

An upstream is one or more replicas (``base_url``, ``base_urls``, or every address a
host name resolves to with ``dns_replicas``, as a Kubernetes headless Service gives).
A request goes to the replica with the fewest requests outstanding among those that

* have a closed circuit (or an open one whose wait is over: that request is the probe),
* and, for a LoRA adapter, list it once the replica's model list is known — so an
  adapter is never sent to a replica that has not loaded it (a restarted vLLM forgets
  them; the control task reloads them, see ``control.py``).

Breaker: ``failures`` consecutive failures (refused, reset, timeout, 5xx) open a
replica's circuit for ``open_s``; then one request is let through (half-open): success
closes the circuit, failure opens it again. A dead upstream then costs no latency: its
requests go straight to the experiment's fallback.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from gateway.core.config import BreakerConfig, Upstream

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    config: BreakerConfig
    state: str = CLOSED
    failures: int = 0
    open_until: float = 0.0

    def available(self, now: float) -> bool:
        return self.state == CLOSED or (self.state == OPEN and now >= self.open_until)

    def acquire(self, now: float) -> None:
        """A request is being sent: past an open circuit's wait, it is the probe."""
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN

    def success(self) -> None:
        self.state, self.failures = CLOSED, 0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.config.failures:
            self.state, self.open_until = OPEN, now + self.config.open_s


@dataclass(eq=False)
class Replica:
    url: str  # base URL ending in /v1 (no trailing slash)
    breaker: Breaker
    outstanding: int = 0
    models: frozenset[str] | None = None  # None until listed (or when listing fails)
    parents: dict[str, str] = field(default_factory=dict)  # adapter → its base model

    def serves(self, model: str, listed: bool) -> bool:
        """Whether it may get ``model``; a ``listed`` one (an adapter) only once it lists it."""
        return not listed or self.models is None or model in self.models


class NoReplica(Exception):
    """No replica of the upstream can take the request now; ``str()`` says why."""


class Pool:
    """The replicas of one upstream."""

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream
        self.replicas: list[Replica] = [self._replica(u) for u in upstream.urls]

    def _replica(self, url: str) -> Replica:
        return Replica(url.rstrip("/"), Breaker(self.upstream.breaker))

    def pick(self, model: str, listed: bool = False) -> Replica:
        now = time.monotonic()
        serving = [r for r in self.replicas if r.serves(model, listed)]
        if not serving:
            raise NoReplica(f"no replica of upstream '{self.name}' has model '{model}' loaded")
        ready = [r for r in serving if r.breaker.available(now)]
        if not ready:
            raise NoReplica(f"the circuit of upstream '{self.name}' is open (recent failures)")
        least = min(r.outstanding for r in ready)
        choice = random.choice([r for r in ready if r.outstanding == least])
        choice.breaker.acquire(now)
        return choice

    def states(self) -> dict[str, int]:
        out = {CLOSED: 0, OPEN: 0, HALF_OPEN: 0}
        for r in self.replicas:
            out[r.breaker.state] += 1
        return out

    async def discover(self) -> None:
        """With ``dns_replicas``: one replica per address the host names resolve to now.

        Replicas that stay keep their state (breaker, outstanding, models).
        """
        if not self.upstream.dns_replicas:
            return
        urls: list[str] = []
        loop = asyncio.get_running_loop()
        for base in self.upstream.urls:
            parts = urlsplit(base)
            host, port = (
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
            )
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                continue  # keep what we had for this name
            for addr in sorted({str(info[4][0]) for info in infos}):
                netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                urls.append(urlunsplit(parts._replace(netloc=netloc)).rstrip("/"))
        if not urls:
            return
        known = {r.url: r for r in self.replicas}
        self.replicas = [known.get(u) or self._replica(u) for u in urls]
