"""HTTP/1.1 to the upstreams on the request path: keep-alive connections, one asyncio
protocol each, responses parsed by httptools (the parser uvicorn serves with).

A chat call sends one JSON body to one of a few fixed hosts and reads the answer back,
whole or as it arrives. aiohttp's client did that in ~370k instructions a call here
(``bench/FINDINGS.md``, round 8), most of them for what such a call never uses: URL
objects, header multidicts, the cookie jar, tracing hooks, the payload registry. This
client does only the call:

* :meth:`Client.request` takes a connection to the URL's origin (an idle one, else a new
  one within ``connect_timeout_s``), writes the request in one write, and returns the
  :class:`Response` once its status and headers are in;
* the response's body is read whole (:meth:`Response.read`) or as it comes
  (:meth:`Response.readany`, :meth:`Response.read_nowait`); reading stops the socket's
  reads while more than ``BUFFER_LIMIT`` bytes wait to be taken;
* ``timeout_s`` bounds the whole call, from the request to the body's last byte: past
  it, the call's wait ends with :class:`TimeoutError` and its connection is closed;
* a response read to its end goes back to its origin's idle connections (for
  ``KEEPALIVE_S``), unless either side said ``Connection: close``; one left early
  (:meth:`Response.close`) closes its connection, which also stops the upstream;
* a call on an idle connection that closes before a byte of the answer (the server's
  keep-alive timeout ran out as the call took it) is sent once more on a new one.

What goes wrong is an :class:`HTTPError` (refused, reset, closed early, not HTTP), a
:class:`ConnectTimeout`, or :class:`TimeoutError`; ``upstream.py`` turns each into the
gateway's error. No redirects, proxies, cookies or content encodings (it asks for none).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

BUFFER_LIMIT = 1 << 18  # body bytes waiting to be read before the socket's reads pause
KEEPALIVE_S = 30.0  # how long an idle connection is kept for the next call


class HTTPError(Exception):
    """The call failed below HTTP: no connection, a reset, a response that is not HTTP."""


class ConnectTimeout(HTTPError):
    """No connection within ``connect_timeout_s``."""


class _Origin:
    """Where a URL's requests go: its connection's address and the request's first lines."""

    __slots__ = ("host", "host_header", "key", "path", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.path = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
        self.key = (self.host, self.port, self.tls)


class Response:
    """An upstream's answer: ``status`` and ``headers`` (lower-case names) once returned,
    the body as it arrives."""

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._loop = loop
        self._head: asyncio.Future[None] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # released or closed

    # -- reading ---------------------------------------------------------------------------

    def read_nowait(self) -> bytes:
        """What has arrived and not been read (b"": nothing yet, or the end)."""
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > BUFFER_LIMIT:
            self._conn.resume_reading()
        self._buffered = 0
        return data

    def is_eof(self) -> bool:
        """The whole body has arrived and been read."""
        return self._eof and not self._chunks

    async def readany(self) -> bytes:
        """The next bytes of the body, as soon as there are any; b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- ending ----------------------------------------------------------------------------

    def release(self) -> None:
        """Done with the response: its connection is kept for the next call when the body
        was read to the end and neither side closes it, else closed."""
        if self._done:
            return
        self._done = True
        self._stop_timer()
        if self._eof and not self._chunks and self._error is None:
            self._conn.finished(self)
        else:
            self._conn.close()

    def close(self) -> None:
        """Done with the response, whatever is left of it: its connection is closed."""
        if self._done:
            return
        self._done = True
        self._stop_timer()
        self._conn.close()

    # -- fed by the connection -------------------------------------------------------------

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError())
        self._conn.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._eof or self._error is not None:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: no "never retrieved" warning if unawaited
        self._wake()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT:
            self._conn.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._eof = True
        self._stop_timer()
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; parses the response of its current call."""

    def __init__(self, client: Client, key: tuple[str, int, bool]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.received = False  # any bytes of the current call's response yet
        self.idle_since = 0.0
        self._reading_paused = False
        self._until_close = False  # the body ends when the connection does
        self._body: list[bytes] = []  # body pieces of the read being parsed
        self._complete = False  # the read being parsed ended the response

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self.received = True
        resp = self.response
        if resp is None:  # nothing asked: a server that talks out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)  # (the callbacks below run meanwhile)
        except httptools.HttpParserError as exc:
            self._body.clear()
            resp._fail(HTTPError(f"malformed response: {exc}"))
            self.close()
            return
        if self._body:  # what one read brought goes to the reader as one piece
            body = self._body
            resp._feed(body[0] if len(body) == 1 else b"".join(body))
            body.clear()
        if self._complete:
            self._complete = False
            resp._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.forget(self)
        resp, self.response = self.response, None
        if resp is None:
            return
        if self._until_close and resp._head.done() and exc is None:
            resp._end()  # a body without a length: the close was its end
        else:
            reason = f": {exc}" if exc else ""
            resp._fail(HTTPError(f"the connection closed before the response ended{reason}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        resp.status = self.parser.get_status_code()
        h = resp.headers
        self._until_close = "content-length" not in h and "transfer-encoding" not in h
        if not resp._head.done():
            resp._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._until_close = False
        self._complete = True
        if not self.parser.should_keep_alive():
            self.closed = True  # not for another call; closed once the response is done

    # -- for Response and Client -----------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def finished(self, resp: Response) -> None:
        """``resp`` was read to its end: keep the connection for the next call."""
        if self.response is resp:
            self.response = None
        if self.closed:
            self.close()
        else:
            self.client.keep(self)

    def close(self) -> None:
        self.closed = True
        self.client.forget(self)
        if self.transport is not None:
            self.transport.close()


class Client:
    """Keep-alive connections to the upstreams' origins, made as calls need them."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: for ``https`` origins (default: the system's certificate
        authorities, certificates and host names verified)."""
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._open: set[_Connection] = set()
        self._ssl = ssl_context

    async def request(
        self,
        url: str,
        body: bytes,
        headers: bytes,
        *,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> Response:
        """POST ``body`` to ``url`` with ``headers`` (encoded lines, each ending in CRLF);
        the response once its status and headers are in."""
        loop = asyncio.get_running_loop()
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _Origin(url)
        deadline = loop.time() + timeout_s
        request = b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
            origin.path,
            origin.host_header,
            headers,
            len(body),
            body,
        )
        conn = self._take_idle(origin.key)
        while True:
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, loop, min(connect_timeout_s, timeout_s))
            resp = conn.response = Response(conn, loop)
            conn.received = False
            resp._timer = loop.call_at(deadline, resp._expire)
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                await resp._head
            except HTTPError:
                resp.close()
                if reused and not conn.received:
                    # An idle connection the server had closed as this call took it (its
                    # keep-alive timeout): the request never reached it. Once, anew.
                    conn = None
                    continue
                raise
            except BaseException:
                resp.close()
                raise
            return resp

    def _take_idle(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            assert conn.transport is not None
            if not conn.closed and not conn.transport.is_closing():
                if now - conn.idle_since < KEEPALIVE_S:
                    return conn
            conn.close()
        return None

    async def _connect(
        self, origin: _Origin, loop: asyncio.AbstractEventLoop, timeout_s: float
    ) -> _Connection:
        ctx = None
        if origin.tls:
            ctx = self._ssl = self._ssl or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, origin.key), origin.host, origin.port, ssl=ctx
                ),
                timeout_s,
            )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {origin.host}:{origin.port} within {timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise HTTPError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        self._open.add(conn)
        return conn

    def keep(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (calls still running fail)."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run


def header_lines(headers: dict[str, str]) -> bytes:
    """Request headers as :meth:`Client.request` takes them."""
    return b"".join(
        b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
    )
