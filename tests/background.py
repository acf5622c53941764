"""An aiohttp app served from a thread of its own: how the tests' stand-in servers run.

Subclasses add their routes in :meth:`BackgroundServer.routes`; ``start()`` returns once
the server listens on ``127.0.0.1:port``, ``stop()`` closes it and its loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web

from flywheel_stack import free_port


class BackgroundServer:
    handler_cancellation = False  # True: a client that goes away cancels its handler

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=self.handler_cancellation)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
