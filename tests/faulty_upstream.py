"""A deliberately broken OpenAI-style upstream, for injecting faults on purpose.

Not a stand-in for vLLM: every test of normal serving uses the real vLLM server. This
one misbehaves in the way the requested ``model`` names:

* ``slow``      — waits ``delay_s`` before answering (timeouts)
* ``reset``     — closes the connection without an answer (502)
* ``http500``   — answers HTTP 500 with an OpenAI-shaped error
* ``cutoff``    — streams three chunks, then resets the connection (no ``[DONE]``)
* ``endless``   — streams a chunk every 20 ms until the client goes away, and records
  when the connection was closed (cancellation reaches the upstream)
* ``http503``   — answers HTTP 503 (overloaded)
* ``silent``    — sends a stream's headers, then nothing (first-byte timeout)
* ``stall``     — streams two chunks, then nothing (idle timeout)
* ``garbage``   — a stream whose first data line is not JSON (malformed SSE)
* ``garbage-later`` — two good chunks, then a line that is not JSON
* ``trickle``   — a complete stream of 20 chunks, one every ``delay_s / 20`` (drain tests)
* ``fixed-slow*`` — a ``fixed-*`` answer after ``slow_fixed_s`` (a slow but healthy model:
  latency guardrails)
* ``judge-*``   — a judge that answers the verdicts it is scripted with (``verdicts``:
  the first whose key is in the prompt wins) and records every prompt (``judged``)
* ``fixed-*``   — answers at once, "answer from <model>" (streamed or not): the healthy
  baseline beside the faults, and a fast upstream for tests that need many requests
  through the routing (vLLM on CPU takes tens of milliseconds per answer)
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from .background import BackgroundServer


class FaultyUpstream(BackgroundServer):
    handler_cancellation = True

    def __init__(self, delay_s: float = 5.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.stream_closed_at: float | None = None
        self.chunks_sent = 0
        self.requests = 0  # chat requests received
        self.slow_fixed_s = 0.2
        self.verdicts: dict[str, str] = {}  # judge-*: text in the prompt → the reply
        self.judged: list[str] = []  # judge-*: every prompt received

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        mode = body.get("model")
        if isinstance(mode, str) and mode.startswith("fixed-slow"):
            await asyncio.sleep(self.slow_fixed_s)
        if isinstance(mode, str) and mode.startswith("judge"):
            prompt = str(body["messages"][-1]["content"])
            self.judged.append(prompt)
            reply = next((v for k, v in self.verdicts.items() if k in prompt), "no verdict")
            return web.json_response(
                {
                    "id": "up-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": mode,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": reply},
                        }
                    ],
                }
            )
        if isinstance(mode, str) and mode.startswith("fixed"):
            return await self._fixed(request, mode, body.get("stream") is True)
        if mode == "slow":
            await asyncio.sleep(self.delay_s)
            return web.json_response({"error": {"message": "too late"}}, status=500)
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode == "http500":
            return web.json_response(
                {"error": {"message": "engine exploded", "type": "server_error"}}, status=500
            )
        if mode == "http503":
            return web.json_response(
                {"error": {"message": "server overloaded", "type": "server_error"}}, status=503
            )
        if mode in ("silent", "stall", "garbage", "garbage-later", "trickle"):
            return await self._misbehave(request, mode)
        if mode in ("endless", "cutoff"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            sent = 0
            try:
                while True:
                    chunk = {
                        "id": "up-1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": mode,
                        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
                    }
                    await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                    self.chunks_sent += 1
                    sent += 1
                    if mode == "cutoff" and sent == 3:
                        assert request.transport is not None
                        request.transport.abort()
                        return resp
                    await asyncio.sleep(0.02)
            except (ConnectionResetError, asyncio.CancelledError):
                self.stream_closed_at = time.monotonic()
                raise
        return web.json_response({"error": {"message": f"unknown mode {mode}"}}, status=404)

    async def _fixed(self, request: web.Request, mode: str, stream: bool) -> web.StreamResponse:
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        if not stream:
            return web.json_response(
                {
                    "id": "up-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": mode,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"answer from {mode}"},
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for delta, finish in (
            ({"role": "assistant", "content": "answer "}, None),
            ({"content": f"from {mode}"}, "stop"),
        ):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {
                "id": "up-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": mode,
                "choices": [choice],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        last = {
            "id": "up-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": mode,
            "choices": [],
            "usage": usage,
        }
        await resp.write(b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n")
        return resp

    async def _misbehave(self, request: web.Request, mode: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        good = {"stall": 2, "garbage-later": 2, "trickle": 20}.get(mode, 0)
        for i in range(good):
            delta = {"role": "assistant", "content": "x"} if i == 0 else {"content": "x"}
            finish = "stop" if mode == "trickle" and i == good - 1 else None
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {
                "id": "up-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": mode,
                "choices": [choice],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            self.chunks_sent += 1
            if mode == "trickle":
                await asyncio.sleep(self.delay_s / 20)
        if mode == "trickle":
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if mode in ("garbage", "garbage-later"):
            await resp.write(b"data: {this is not json\n\n")
            return resp
        await asyncio.sleep(3600)  # silent, stall: until the gateway gives up and hangs up
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
