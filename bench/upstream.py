"""A fixed-response OpenAI-compatible upstream: as fast as Python gets (uvloop + httptools).

``python -m bench.upstream --port P [--slow-interval-ms 100 --slow-chunks 10]``

* ``POST /v1/chat/completions`` answers every request with the same completion; with
  ``"stream": true`` it answers the same content as an SSE stream (role chunk, content
  chunks, finish chunk, usage chunk, ``[DONE]``), all in one write.
* A request whose ``model`` starts with ``slow`` gets a stream whose content chunks are
  sent ``--slow-interval-ms`` apart (the first at once): the streaming mode checks that a
  gateway relays each chunk as it arrives.
* ``GET /v1/models`` lists a few models; any other request gets 404.

The request body is never JSON-parsed: two byte patterns decide streaming and slowness.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import httptools
import orjson

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
SLOW_RE = re.compile(rb'"model"\s*:\s*"slow')
CONTENT = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
USAGE = {"prompt_tokens": 9, "completion_tokens": len(CONTENT), "total_tokens": 9 + len(CONTENT)}
CREATED = 1_700_000_000


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": CREATED,
            "model": "a",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(CONTENT)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )


def sse_event(
    delta: dict[str, Any] | None, finish: str | None = None, usage: bool = False
) -> bytes:
    """One ``data:`` event of a chat completion stream (``delta=None``: the usage chunk)."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    doc: dict[str, Any] = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "a",
        "choices": choices,
    }
    if usage:
        doc["usage"] = USAGE
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (``b""`` gives the terminating chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_events(n_content: int) -> list[bytes]:
    """The events of a stream with ``n_content`` content chunks, the first with the role."""
    words = [CONTENT[i % len(CONTENT)] for i in range(n_content)]
    events = [sse_event({"role": "assistant", "content": words[0]})]
    events += [sse_event({"content": w}) for w in words[1:]]
    events.append(sse_event({}, finish="stop") + sse_event(None, usage=True) + b"data: [DONE]\n\n")
    return events


def response_head(status: str, ctype: bytes, length: int | None, keep_alive: bool) -> bytes:
    head = [b"HTTP/1.1 " + status.encode(), b"Content-Type: " + ctype]
    head.append(b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length)
    if not keep_alive:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n"


class Responses:
    """Every response, rendered once."""

    def __init__(self, slow_interval_s: float, slow_chunks: int) -> None:
        self.slow_interval_s = slow_interval_s
        body = completion_body()
        self.completion = {
            ka: response_head("200 OK", b"application/json", len(body), ka) + body
            for ka in (True, False)
        }
        fast = b"".join(chunked(e) for e in stream_events(len(CONTENT))) + chunked(b"")
        self.stream_head = {
            ka: response_head("200 OK", b"text/event-stream", None, ka) for ka in (True, False)
        }
        self.stream = {ka: self.stream_head[ka] + fast for ka in (True, False)}
        self.slow_events = [chunked(e) for e in stream_events(slow_chunks)]
        models = orjson.dumps(
            {
                "object": "list",
                "data": [{"id": m, "object": "model"} for m in ("a", "b", "slow-a", "slow-b")],
            }
        )
        self.models = {
            ka: response_head("200 OK", b"application/json", len(models), ka) + models
            for ka in (True, False)
        }
        missing = b'{"error":{"message":"not found"}}'
        self.not_found = {
            ka: response_head("404 Not Found", b"application/json", len(missing), ka) + missing
            for ka in (True, False)
        }


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (keep-alive, pipelining tolerated)."""

    def __init__(self, responses: Responses) -> None:
        self.r = responses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ka = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if method == b"POST" and self.url.endswith(b"/chat/completions"):
            body = b"".join(self.body)
            if STREAM_RE.search(body) is None:
                transport.write(self.r.completion[ka])
            elif SLOW_RE.search(body) is None:
                transport.write(self.r.stream[ka])
            else:
                self._slow_stream(transport, ka)
                return
        elif method == b"GET" and self.url.endswith(b"/models"):
            transport.write(self.r.models[ka])
        else:
            transport.write(self.r.not_found[ka])
        if not ka:
            transport.close()

    def _slow_stream(self, transport: asyncio.Transport, ka: bool) -> None:
        """Content chunk i goes out at i × interval; the finish, usage and [DONE] events
        go with the last one."""
        loop = asyncio.get_running_loop()
        writes = list(self.r.slow_events[:-1])
        writes[-1] += self.r.slow_events[-1] + chunked(b"")
        writes[0] = self.r.stream_head[ka] + writes[0]
        now = loop.time()
        for i, data in enumerate(writes):
            close = i == len(writes) - 1 and not ka
            if i == 0:
                self._write_later(transport, data, close)
            else:
                loop.call_at(
                    now + i * self.r.slow_interval_s, self._write_later, transport, data, close
                )

    @staticmethod
    def _write_later(transport: asyncio.Transport, data: bytes, close: bool) -> None:
        if not transport.is_closing():
            transport.write(data)
            if close:
                transport.close()


async def serve(host: str, port: int, responses: Responses) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(responses), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slow-interval-ms", type=float, default=100.0)
    p.add_argument("--slow-chunks", type=int, default=10)
    args = p.parse_args(argv)
    responses = Responses(args.slow_interval_ms / 1000, args.slow_chunks)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, responses))
    except ImportError:
        asyncio.run(serve(args.host, args.port, responses))


if __name__ == "__main__":
    main()
