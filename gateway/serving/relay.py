"""The stream relay: upstream SSE lines rewritten for the client (:func:`rewrite`), and
the response that writes them (:class:`RelayResponse`).

Each ``data:`` line gets the gateway's id and the arm's name, loses the fields vLLM sends
as null where OpenAI's schema has none, and feeds the turn's answer; the usage chunk the
gateway asked for (and the client did not) is taken out, and the finishing chunk is held
back until it brings vLLM's ``system_fingerprint``. The lines of one upstream read go to
the client as one write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.core.errors import GatewayError
from gateway.serving.turn import (
    NON_NULLABLE_MESSAGE,
    MoreChoice,
    Turn,
    conform_usage,
    merge_tool_calls,
)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A stream's own headers, encoded once (what Starlette's init_headers would make of them).
_SSE_RAW = [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()] + [
    (b"content-type", b"text/event-stream; charset=utf-8")
]


def rewrite_all(turn: Turn, lines: list[bytes]) -> bytes:
    """The data lines that arrived together, rewritten as one write (up to an error)."""
    out = b""
    for line in lines:
        if line.startswith(b"data:"):
            rewritten = rewrite(turn, line)
            if rewritten:
                out += rewritten
            elif turn.status == "error":
                break
    return out


def rewrite(turn: Turn, line: bytes) -> bytes | None:
    """One upstream ``data:`` line → the bytes to send the client (None: send nothing)."""
    payload = line[5:].strip()
    if turn.text_shape is not None and turn.held is None:
        spliced = _splice(turn, turn.text_shape, payload)
        if spliced is not None:
            return spliced
    if payload == b"[DONE]":
        turn.done = True
        return release(turn) + b"data: [DONE]\n\n"
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        turn.status, turn.error = "error", "malformed chunk from upstream"
        return None
    if "error" in chunk:
        err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk}
        turn.status, turn.error = "error", str(err.get("message"))
        return None
    chunk["id"], chunk["model"] = turn.id, turn.target.name
    # conform(chunk, "delta"), with its loop over the choices merged into the one below
    choices = chunk.get("choices")
    usage_given = chunk.get("usage") is not None
    if "usage" in chunk:
        conform_usage(chunk["usage"])
        if turn.want_usage:
            if chunk["usage"]:
                turn.usage = chunk["usage"]
        else:
            usage = chunk.pop("usage")
            if usage:
                turn.usage = usage
    if not choices and not turn.want_usage:  # the usage chunk the client did not ask for
        if turn.held is not None and chunk.get("system_fingerprint"):
            turn.held["system_fingerprint"] = chunk["system_fingerprint"]
        return release(turn) or None
    finishing = False
    for choice in choices or ():
        # conform_choice(choice, "delta") and, for choice 0, taking the delta's text
        # and tool calls into the turn, inlined: this runs for every chunk of every stream
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if None in delta.values():
                for name in NON_NULLABLE_MESSAGE:
                    if name in delta and delta[name] is None:
                        del delta[name]
        else:
            delta = {}
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            logprobs.setdefault("refusal", None)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            finishing = True
        index = choice.get("index", 0)
        if index == 0:
            content = delta.get("content")
            if content:
                turn.answer.append(content)
            calls = delta.get("tool_calls")
            if calls:
                merge_tool_calls(turn.tool_calls, calls)
            if turn.ttft is None and (content or calls):
                turn.ttft = time.perf_counter()
            if finish_reason:
                turn.finish_reason = finish_reason
        elif isinstance(index, int):
            more = turn.more.setdefault(index, MoreChoice())
            more.take(delta, finish_reason, True)
    earlier = release(turn) if turn.held is not None else b""
    if finishing and not turn.want_usage and not chunk.get("system_fingerprint"):
        turn.held = chunk
        return earlier or None
    if turn.text_shape is None and not (earlier or finishing or usage_given):
        turn.text_shape = _text_shape(payload, chunk, choices)
    return earlier + b"data: " + orjson.dumps(chunk) + b"\n\n"


# Text deltas (one per token: most of a stream) differ from each other only in their
# text. The first one that is nothing but text gives the stream's shape: the upstream's
# bytes before and after its text's JSON string, and what rewriting it made of them. A
# later delta with the same bytes around a JSON string is the same chunk with another
# text: its rewrite is ours around its string, and its string is checked by decoding it
# alone (bench/FINDINGS.md, round 8: a quarter of the decode-and-encode's cost).
_MARK = "flywheel-text-mark"
_MARK_JSON = orjson.dumps(_MARK)


def _text_shape(
    payload: bytes, chunk: dict[str, Any], choices: Any
) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The shape of ``chunk`` (just rewritten from ``payload``), when it is a text delta of
    choice 0 alone and its text's JSON string is in ``payload`` once, where decoding says
    the text is; else None."""
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if choice.get("index", 0) != 0 or not isinstance(delta, dict) or len(delta) != 1:
        return None
    text = delta.get("content")
    if not isinstance(text, str) or choice.get("logprobs") is not None:
        return None
    encoded = orjson.dumps(text)
    if payload.count(encoded) != 1:
        return None
    before, after = payload.split(encoded)
    try:  # the string found is the text: in its place, the mark is the delta's text
        if orjson.loads(before + _MARK_JSON + after)["choices"][0]["delta"] != {"content": _MARK}:
            return None
    except (ValueError, LookupError, TypeError):  # (orjson.JSONDecodeError is a ValueError)
        return None
    delta["content"] = _MARK
    ours = orjson.dumps(chunk)
    delta["content"] = text
    if ours.count(_MARK_JSON) != 1:
        return None
    out_before, out_after = ours.split(_MARK_JSON)
    return before, after, b"data: " + out_before, out_after + b"\n\n"


def _splice(turn: Turn, shape: tuple[bytes, bytes, bytes, bytes], payload: bytes) -> bytes | None:
    """:func:`rewrite` of a text delta of the stream's shape, else None."""
    before, after, out_before, out_after = shape
    if (
        len(payload) < len(before) + len(after) + 2
        or not payload.startswith(before)
        or not payload.endswith(after)
    ):
        return None
    encoded = payload[len(before) : len(payload) - len(after)]
    try:
        text = orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return None
    if type(text) is not str:
        return None
    if text:
        turn.answer.append(text)
        if turn.ttft is None:
            turn.ttft = time.perf_counter()
    return out_before + encoded + out_after


class RelayResponse(Response):
    """An SSE response written straight to the server, one write per upstream read, that
    always ends its relay, however the client's request ends.

    Starlette's ``StreamingResponse`` runs every response in an anyio task group to hear
    a disconnect (a fifth of a streamed request's CPU in ``bench/``); here one plain task
    waits for it and cancels the relay, whose cleanup (close the upstream, log the
    interaction) then runs — also when the relay never started. The write that carries
    ``[DONE]`` (``done()`` is true after it) also ends the response; the relay then
    finishes reading the upstream without the client waiting for it.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        relay: AsyncGenerator[bytes, None],
        *,
        abandon: Callable[[], Awaitable[None]],
        done: Callable[[], bool],
        headers: dict[str, str],
    ) -> None:
        self.status_code = 200
        self.background = None
        # headers, then the SSE ones and the content type (init_headers' work, done directly)
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ] + _SSE_RAW
        self._relay = relay
        self._abandon = abandon
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = complete = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not complete:  # (once complete, the server reports a disconnect anyway)
                gone = True
                task.cancel()

        # A stream that came whole with its first read (``[DONE]`` included) has nothing
        # left to wait for: no watcher then.
        watcher = None if self._done() else asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self._relay:
                if not complete:
                    complete = self._done()
                    await send(
                        {"type": "http.response.body", "body": data, "more_body": not complete}
                    )
            if not complete:
                complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client left: this response is over, not the server
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._relay.aclose()  # runs the relay's own cleanup if it started
            await self._abandon()  # cleans up if it never did


def release(turn: Turn) -> bytes:
    """The held-back finishing chunk as an SSE event (b"" when none is held)."""
    held, turn.held = turn.held, None
    return b"data: " + orjson.dumps(held) + b"\n\n" if held is not None else b""


def sse_error(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"
