"""The upstream HTTP/1.1 client (``gateway/serving/http1.py``) against a scripted server.

The chat, stream and fault tests drive the client through the gateway against vLLM and
the faulty upstream; these cover what they cannot script byte by byte: connection reuse
and ``Connection: close``, a body that ends with the connection, a reset in the middle of
a chunked body, bytes that are not HTTP, a body larger than the read buffer read slowly,
and the call's total timeout. The server is a real socket server on this machine that
answers each request with the raw bytes a test gives it.
"""

from __future__ import annotations

import asyncio
import ssl
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

import pytest

from gateway.serving import http1
from tests.certs import CertificateAuthority

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
HEADERS = http1.header_lines({"Content-Type": "application/json"})
TEXTS = {
    "en": "Where is my parcel?",
    "th": "พัสดุของฉันอยู่ที่ไหน",
    "vi-nfc": unicodedata.normalize("NFC", "Bưu kiện của tôi ở đâu?"),
    "vi-nfd": unicodedata.normalize("NFD", "Bưu kiện của tôi ở đâu?"),
}


class Scripted:
    """A server whose ``reply`` writes the raw answer to each request; counts connections."""

    def __init__(self, reply: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.tls = tls
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{port}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                await self.reply(body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (
            extra,
            len(body),
            body,
        )
    )


async def echo(body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(ok(body))


def run(coro: Coroutine[None, None, None]) -> None:
    asyncio.run(coro)


async def call(client: http1.Client, url: str, body: bytes, timeout_s: float = 5.0) -> bytes:
    resp = await client.request(url, body, HEADERS, timeout_s=timeout_s, connect_timeout_s=2.0)
    try:
        assert resp.status == 200
        return await resp.read()
    finally:
        resp.release()


@pytest.mark.parametrize("lang", TEXTS)
def test_calls_share_one_connection_and_bodies_arrive_byte_for_byte(lang: str) -> None:
    """An echo of each language's text (Vietnamese in both forms: the bytes differ, and
    each must come back as sent): three calls, one connection."""

    async def main() -> None:
        server, client = Scripted(echo), http1.Client()
        async with server as url:
            sent = TEXTS[lang].encode()
            for _ in range(3):
                assert await call(client, url, sent) == sent
        await client.close()
        assert server.connections == 1

    run(main())


def test_connection_close_is_honoured_and_the_next_call_connects_again() -> None:
    async def closing(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b'{"n": 1}', close=True))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, client = Scripted(closing), http1.Client()
        async with server as url:
            assert await call(client, url, b"{}") == b'{"n": 1}'
            assert await call(client, url, b"{}") == b'{"n": 1}'
        await client.close()
        assert server.connections == 2

    run(main())


def test_an_idle_connection_closed_by_the_server_under_a_call_is_replaced_once() -> None:
    """The server takes the second request on the first connection and closes it without
    a word (its keep-alive timeout, as the call came): the call goes again on a new
    connection. A new connection that does the same is an error (no second try)."""
    seen: list[int] = []

    async def drop_second(body: bytes, writer: asyncio.StreamWriter) -> None:
        seen.append(id(writer))
        if body == b"drop" and seen.count(id(writer)) == 2:
            writer.transport.abort()
        elif body == b"always-drop":
            writer.transport.abort()
        else:
            writer.write(ok(b'{"ok": true}'))

    async def main() -> None:
        server, client = Scripted(drop_second), http1.Client()
        async with server as url:
            assert await call(client, url, b"drop") == b'{"ok": true}'
            assert await call(client, url, b"drop") == b'{"ok": true}'
            assert server.connections == 2
            with pytest.raises(http1.HTTPError, match="closed before the response ended"):
                await call(client, url, b"always-drop")  # on the idle one, then a new one
            assert server.connections == 3
        await client.close()

    run(main())


def test_a_body_without_a_length_ends_with_the_connection() -> None:
    text = TEXTS["th"].encode() * 100

    async def until_close(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(0, len(text), 1000):
            writer.write(text[i : i + 1000])
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, client = Scripted(until_close), http1.Client()
        async with server as url:
            assert await call(client, url, b"{}") == text
            assert await call(client, url, b"{}") == text  # (not reused: a new connection)
        await client.close()
        assert server.connections == 2

    run(main())


def test_a_reset_inside_a_chunked_body_is_an_error_and_the_connection_is_not_reused() -> None:
    async def cut(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.transport.abort()

    async def main() -> None:
        server, client = Scripted(cut), http1.Client()
        async with server as url:
            for _ in range(2):
                resp = await client.request(
                    url, b"{}", HEADERS, timeout_s=5.0, connect_timeout_s=2.0
                )
                assert await resp.readany() == b"hello"
                with pytest.raises(http1.HTTPError, match="closed before the response ended"):
                    await resp.read()
                resp.release()
        await client.close()
        assert server.connections == 2

    run(main())


def test_bytes_that_are_not_http_are_an_error() -> None:
    async def garbage(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async def main() -> None:
        client = http1.Client()
        async with Scripted(garbage) as url:
            with pytest.raises(http1.HTTPError, match="malformed response"):
                await client.request(url, b"{}", HEADERS, timeout_s=5.0, connect_timeout_s=2.0)
        await client.close()

    run(main())


def test_a_large_body_read_slowly_arrives_whole() -> None:
    """4 MiB of streamed lines in three languages, read with pauses: the socket's reads
    stop while the buffer is over its limit and resume as it is read; nothing is lost."""
    line = ("data: " + " ".join(TEXTS.values()) + "\n\n").encode()
    body = line * (4 * 2**20 // len(line))

    async def big(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 65536):
            part = body[i : i + 65536]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        client = http1.Client()
        async with Scripted(big) as url:
            resp = await client.request(url, b"{}", HEADERS, timeout_s=30.0, connect_timeout_s=2.0)
            got = []
            while chunk := await resp.readany():
                got.append(chunk)
                await asyncio.sleep(0.001)
            resp.release()
        await client.close()
        assert b"".join(got) == body

    run(main())


def test_the_total_timeout_ends_a_call_whose_body_stalls() -> None:
    async def stall(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        client = http1.Client()
        async with Scripted(stall) as url:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            resp = await client.request(url, b"{}", HEADERS, timeout_s=0.5, connect_timeout_s=2.0)
            with pytest.raises(TimeoutError):
                await resp.read()
            assert 0.4 < loop.time() - t0 < 2.0
            resp.release()
        await client.close()

    run(main())


def test_a_refused_connection_is_an_error_naming_the_address() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = http1.Client()
        with pytest.raises(http1.HTTPError, match=f"cannot connect to 127.0.0.1:{port}"):
            await client.request(
                f"http://127.0.0.1:{port}/v1", b"{}", HEADERS, timeout_s=5.0, connect_timeout_s=2.0
            )
        await client.close()

    run(main())


def test_https_verifies_the_upstream_certificate_and_carries_every_language(
    tmp_path: Path,
) -> None:
    """An upstream whose certificate a test authority signed: trusted through the client's
    context, every language's bytes arrive; with the default context (the system's
    authorities), the call is refused before any request is sent."""
    ca = CertificateAuthority(tmp_path)
    server_ctx = ca.server_context("127.0.0.1")

    async def main() -> None:
        trusting = http1.Client(ssl_context=ca.client_context())
        server = Scripted(echo, tls=server_ctx)
        async with server as url:
            for text in TEXTS.values():
                assert await call(trusting, url, text.encode()) == text.encode()
            assert server.connections == 1
            default = http1.Client()
            with pytest.raises(http1.HTTPError, match="CERTIFICATE_VERIFY_FAILED"):
                await call(default, url, b"{}")
            await default.close()
        await trusting.close()

    run(main())
