"""An OpenAI-style upstream whose answers the test writes: a behaviour-injection tool.

Not a stand-in for vLLM (normal serving is tested on the real vLLM server). Each model
name maps to a function of the request's messages that returns the answer, so a test
can make one model better than another on exactly the examples it chooses, or make a
judge model answer scripted verdicts. An answer is cut at the request's ``max_tokens``,
counting a word as a token, so a test sees the limit the caller sent; or, given
``encodings`` (a model name's prefix → a tokenizer with ``encode`` and ``decode``, e.g.
an OpenAI encoding), in that tokenizer's tokens, as a hosted model would cut it. Each
answer's ``(model, finish_reason)`` is kept in ``finishes``. A function may
also return a whole assistant message (a dict: ``content`` and ``tool_calls``), sent as
it is. With ``n`` > 1, choice ``i`` (from 1) is the answer followed by `` #i``. A
``stream`` request gets the same answer as server-sent events (each choice's message in
one chunk). Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .background import BackgroundServer

Script = dict[str, Callable[[list[dict[str, Any]]], Any]]


class ScriptedUpstream(BackgroundServer):
    def __init__(self, script: Script, encodings: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.script = script
        self.encodings = encodings or {}
        self.requests: list[dict[str, Any]] = []
        self.finishes: list[tuple[str, str]] = []

    def _encoding(self, model: str) -> Any:
        return next((e for p, e in self.encodings.items() if model.startswith(p)), None)

    def asked(self, model: str) -> list[dict[str, Any]]:
        """The request bodies ``model`` received, in order."""
        return [r for r in self.requests if r.get("model") == model]

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        answer_of = self.script.get(body.get("model"))
        if answer_of is None:
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        answer = answer_of(body["messages"])
        pieces: list[Any]  # words, or the encoding's tokens
        if isinstance(answer, dict):
            message = {"role": "assistant", "content": None, **answer}
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            pieces = (message["content"] or "").split(" ")
            limit = len(pieces)
            choices = [{"index": 0, "finish_reason": finish, "message": message}]
        else:
            enc = self._encoding(body["model"])
            pieces = enc.encode(answer) if enc is not None else answer.split(" ")
            limit = body.get("max_tokens") or len(pieces)
            text = enc.decode(pieces[:limit]) if enc is not None else " ".join(pieces[:limit])
            choices = [
                {
                    "index": i,
                    "finish_reason": "length" if len(pieces) > limit else "stop",
                    "message": {"role": "assistant", "content": text + (f" #{i}" if i else "")},
                }
                for i in range(body.get("n") or 1)
            ]
        self.finishes.append((body["model"], str(choices[0]["finish_reason"])))
        doc = {
            "id": "scripted-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": min(limit, len(pieces)),
                "total_tokens": 1 + min(limit, len(pieces)),
            },
        }
        if body.get("stream") is True:
            return await self._stream(request, body, doc)
        return web.json_response(doc)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], doc: dict[str, Any]
    ) -> web.StreamResponse:
        """``doc`` as a stream: each choice's message as one delta, then its finish, then
        the usage chunk when ``stream_options.include_usage`` asks for it."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        head = {k: doc[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        async def send(chunk: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps({**head, **chunk}).encode() + b"\n\n")

        for c in doc["choices"]:
            delta = {k: v for k, v in c["message"].items() if v is not None}
            await send({"choices": [{"index": c["index"], "delta": delta, "finish_reason": None}]})
            await send(
                {
                    "choices": [
                        {"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}
                    ]
                }
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"choices": [], "usage": doc["usage"]})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
