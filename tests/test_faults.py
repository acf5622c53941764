"""Upstream faults, injected on purpose: each timeout, fallback, the circuit, no leaks.

The gateway here routes only to the fault-injecting upstream (``faulty_upstream.py``),
through an upstream ``timeouts`` whose four timeouts are short and distinct, so each
test can tell which one fired and that it fired on time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletion

from flywheel_stack import free_port
from tests.conftest import CLIENT, gateway_config
from tests.faulty_upstream import FaultyUpstream
from tests.polling import eventually
from tests.services import GatewayProcess, RedisProcess, open_fds, rss_mb

HELLO = [{"role": "user", "content": "hello"}]
TIMEOUTS = {"connect_timeout_s": 0.5, "first_byte_timeout_s": 0.6, "idle_timeout_s": 0.4}
FAULTS = ("silent", "garbage", "http503", "reset", "http500", "slow")


@pytest.fixture(scope="module")
def blackhole() -> Iterator[str]:
    """A listener whose accept queue is full: a new connection to it never completes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped, connect() hangs
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/v1"
    for s in [*fillers, sock]:
        s.close()


def faults_config(faulty_url: str, redis_url: str, blackhole_url: str) -> dict[str, Any]:
    cfg = gateway_config(f"http://127.0.0.1:{free_port()}/v1", faulty_url, redis_url)
    cfg["upstreams"].update(
        {
            "timeouts": {
                "kind": "vllm",
                "base_url": faulty_url,
                "timeout_s": 2,
                **TIMEOUTS,
                "breaker": {"failures": 1_000_000},
            },
            "blackhole": {"kind": "vllm", "base_url": blackhole_url, **TIMEOUTS},
            # Opens after 3 failures, half-opens after 1 s.
            "fragile": {
                "kind": "vllm",
                "base_url": faulty_url,
                "breaker": {"failures": 3, "open_s": 1},
            },
        }
    )
    models = {
        f"t-{m}": {"upstream": "timeouts", "model": m}
        for m in FAULTS + ("stall", "garbage-later", "endless")
    }
    models["t-fixed"] = {"upstream": "timeouts", "model": "fixed-a"}
    models["unreachable"] = {"upstream": "blackhole", "model": "fixed-a"}
    models["fragile-500"] = {"upstream": "fragile", "model": "http500"}
    models["fragile-ok"] = {"upstream": "fragile", "model": "fixed-b"}
    cfg["models"].update(models)
    cfg["experiments"].update(
        {
            f"fb-{m}": {
                "arms": [{"model": f"t-{m}", "weight": 100}, {"model": "fixed-a", "weight": 0}],
                "fallback": "fixed-a",
            }
            for m in FAULTS
        }
    )
    return cfg


@pytest.fixture(scope="module")
def gateway(
    faulty: FaultyUpstream,
    redis_server: RedisProcess,
    blackhole: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    g = GatewayProcess(
        faults_config(faulty.base_url, redis_server.url, blackhole),
        tmp_path_factory.mktemp("faults"),
    ).start()
    yield g  # this module's `gateway`: conftest's `client` fixture talks to it
    g.stop()


@pytest.mark.parametrize(
    ("model", "stream", "names", "after_s", "before_s"),
    [
        # Each fires before the next longer one could: 0.5 / 0.6 s < 2 s (total) < 3 s (delay).
        ("unreachable", False, "connect_timeout_s", 0.5, 2.0),
        ("t-slow", True, "first_byte_timeout_s", 0.6, 2.0),  # not even headers
        ("t-silent", True, "first_byte_timeout_s", 0.6, 2.0),  # headers, then no data
        ("t-slow", False, "timeout_s", 2.0, 3.0),  # a non-streamed answer: the total applies
    ],
)
def test_a_timeout_before_the_first_byte_is_a_504_naming_it(
    client: openai.OpenAI, model: str, stream: bool, names: str, after_s: float, before_s: float
) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=model, messages=HELLO, stream=stream)
    took = time.monotonic() - t0
    assert info.value.status_code == 504
    assert f"({names})" in info.value.message
    assert after_s <= took < before_s


@pytest.mark.parametrize(
    ("model", "names", "after_s", "before_s"),
    [("t-stall", "idle_timeout_s", 0.4, 2.0), ("t-endless", "timeout_s", 2.0, 3.5)],
)
def test_a_timeout_mid_stream_ends_it_with_an_sse_error_naming_it(
    client: openai.OpenAI, model: str, names: str, after_s: float, before_s: float
) -> None:
    t0 = time.monotonic()
    got = []
    with (
        client.chat.completions.create(model=model, messages=HELLO, stream=True) as stream,
        pytest.raises(openai.APIError) as info,
    ):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    took = time.monotonic() - t0
    assert got[:2] == ["x", "x"]  # what came before the silence was relayed
    assert f"({names})" in info.value.message
    assert after_s <= took < before_s


def test_malformed_sse_after_the_first_byte_ends_the_stream_with_an_error(
    client: openai.OpenAI,
) -> None:
    got = []
    with (
        client.chat.completions.create(model="t-garbage-later", messages=HELLO, stream=True) as s,
        pytest.raises(openai.APIError) as info,
    ):
        for chunk in s:
            got.append(chunk.choices[0].delta.content)
    assert got == ["x", "x"]
    assert "malformed" in info.value.message


BEFORE_FIRST_BYTE = [(f, False) for f in ("http503", "reset", "http500", "slow")] + [
    (f, True) for f in ("silent", "garbage", "http503", "reset", "http500", "slow")
]


@pytest.mark.parametrize(("fault", "stream"), BEFORE_FIRST_BYTE)
def test_a_fault_before_the_first_byte_falls_back(
    client: openai.OpenAI, fault: str, stream: bool
) -> None:
    if stream:
        chunks = list(
            client.chat.completions.create(model=f"fb-{fault}", messages=HELLO, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert {c.model for c in chunks} == {"fixed-a"}
    else:
        reply = client.chat.completions.create(model=f"fb-{fault}", messages=HELLO)
        text = reply.choices[0].message.content or ""
        assert reply.model == "fixed-a"
    assert text == "answer from fixed-a"


def test_the_circuit_opens_after_failures_and_closes_after_a_good_probe(
    client: openai.OpenAI, gateway: GatewayProcess, faulty: FaultyUpstream
) -> None:
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fragile-500", messages=HELLO)
    assert gateway.metric("flywheel_upstream_replicas", upstream="fragile", state="open") == 1
    # Open: the healthy model on the same replica is refused at once, without a call.
    sent = faulty.requests
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="fragile-ok", messages=HELLO)
    assert info.value.status_code == 502
    assert "circuit of upstream 'fragile' is open" in info.value.message
    assert faulty.requests == sent

    def probe() -> ChatCompletion | None:
        """After open_s the next request is the probe; until then, refused without a call."""
        try:
            return client.chat.completions.create(model="fragile-ok", messages=HELLO)
        except openai.APIStatusError as exc:
            assert exc.status_code == 502 and "is open" in exc.message
            return None

    reply = eventually(probe, "the circuit never let a probe through", every_s=0.1)
    assert reply.choices[0].message.content == "answer from fixed-b"
    assert gateway.metric("flywheel_upstream_replicas", upstream="fragile", state="closed") == 1
    for _ in range(3):
        client.chat.completions.create(model="fragile-ok", messages=HELLO)


async def _fail_many(base_url: str, n: int, concurrency: int = 48) -> dict[int, int]:
    """n requests that all fail, half of them streamed, spread over the kinds of failure.

    aiohttp, not httpx, sends them: httpx's async pool manages ~150 requests/s here.
    """
    models = ["gone", "t-http500", "t-reset", "t-garbage", "t-http503"]
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=CLIENT, connector=connector) as http:
        queue = iter(range(n))

        async def worker() -> None:
            for i in queue:
                body = {"model": models[i % len(models)], "messages": HELLO, "stream": i % 2 == 1}
                async with http.post(base_url + "/chat/completions", json=body) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


@pytest.mark.slow
def test_10000_failed_requests_leak_no_connections_tasks_or_memory(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    assert gateway.proc is not None
    pid = gateway.proc.pid
    asyncio.run(_fail_many(gateway.base_url, 1_000))  # warm up pools, caches and the allocator
    time.sleep(0.5)
    fds, rss, tasks = open_fds(pid), rss_mb(pid), gateway.metric("flywheel_event_loop_tasks")
    statuses = asyncio.run(_fail_many(gateway.base_url, 10_000))
    assert sum(statuses.values()) == 10_000
    assert set(statuses) <= {502, 503, 504}, statuses  # each failed cleanly, in OpenAI's shape
    # Keep-alive pools may hold up to one more idle connection per concurrent client than
    # after the warm-up; a leak would be one per failure (thousands). Keep-alive
    # connections close and the task gauge is sampled every second: wait for both.
    eventually(lambda: open_fds(pid) <= fds + 48, "file descriptors leaked")
    eventually(
        lambda: gateway.metric("flywheel_event_loop_tasks") <= tasks + 5, "asyncio tasks leaked"
    )
    assert rss_mb(pid) < rss + 25, f"memory grew from {rss:.0f} MB to {rss_mb(pid):.0f} MB"
    reply = client.chat.completions.create(model="t-fixed", messages=HELLO)
    assert reply.choices[0].message.content == "answer from fixed-a"
