"""The floor: the least a Python gateway can do — a bare ASGI app that forwards the body.

``python -m bench.floor --port P --upstream http://127.0.0.1:U``

No framework, no auth, no parsing: the request body goes to the upstream unchanged over
one pooled aiohttp ``ClientSession``, and the answer comes back (a stream chunk by chunk,
as it arrives). It runs under uvicorn with the same defaults as the gateway (uvloop,
httptools), so the gap between the two is what Flywheel itself costs.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]


class FloorProxy:
    """An ASGI callable: ``POST /...`` → the same path on the upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._proxy(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.session is not None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        async with self.session.request(
            scope["method"],
            self.upstream + scope["path"],
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp:
            ctype = resp.headers.get("Content-Type", "application/json").encode()
            if ctype.startswith(b"text/event-stream"):
                await send(_start(resp.status, ctype))
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await resp.read()
                await send(_start(resp.status, ctype, len(data)))
                await send({"type": "http.response.body", "body": data})


def _start(status: int, ctype: bytes, length: int | None = None) -> Message:
    headers = [(b"content-type", ctype)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = p.parse_args(argv)
    uvicorn.run(
        FloorProxy(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
