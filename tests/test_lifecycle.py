"""SIGTERM drains: readiness goes false at once, in-flight streams finish, the log is flushed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from flywheel_stack import free_port
from retrain import feedback_log
from tests.conftest import CLIENT, gateway_config
from tests.faulty_upstream import FaultyUpstream
from tests.polling import eventually
from tests.services import GatewayProcess, RedisProcess

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def trickle() -> Iterator[FaultyUpstream]:
    up = FaultyUpstream(delay_s=3.0).start()  # "trickle": 20 chunks over 3 s
    yield up
    up.stop()


@pytest.mark.slow
def test_sigterm_drains_readiness_then_listener_then_streams_and_flushes_the_log(
    trickle: FaultyUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    cfg = gateway_config(f"http://127.0.0.1:{free_port()}/v1", trickle.base_url, redis_server.url)
    cfg["models"]["trickle"] = {"upstream": "faulty", "model": "trickle"}
    cfg["upstreams"]["faulty"]["timeout_s"] = 30
    cfg["shutdown"] = {"drain_s": 2.0, "grace_s": 10}  # the stream runs 3 s
    gw = GatewayProcess(cfg, tmp_path / "gw").start()
    assert gw.proc is not None
    events: list[bytes] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "trickle", "messages": HELLO, "stream": True}
        with httpx.stream(
            "POST", gw.base_url + "/chat/completions", json=body, headers=CLIENT, timeout=30
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip().encode())
                    first.set()

    client = threading.Thread(target=stream)
    try:
        assert httpx.get(gw.url + "/readyz").json()["status"] != "draining"
        client.start()
        assert first.wait(10), "the stream did not start"
        gw.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()

        # At once: not ready, but still serving (load balancers are still catching up).
        ready = eventually(
            lambda: (r := httpx.get(gw.url + "/readyz")).status_code == 503 and r,
            "readiness never said draining",
            timeout_s=1.5,
        )
        assert ready.json()["status"] == "draining"
        answer = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "fixed-a", "messages": HELLO},
            headers=CLIENT,
        )
        assert answer.status_code == 200

        # After drain_s the listener is closed: new connections are refused.
        def refused() -> bool:
            try:
                httpx.get(gw.url + "/healthz", timeout=2)
            except httpx.ConnectError:
                return True
            assert time.monotonic() - t0 < 2.0 + 5, "the listener stayed open past drain_s"
            return False

        eventually(refused, "the listener never closed")
        assert time.monotonic() - t0 >= 1.8, "the listener closed before drain_s (2 s)"

        # The stream in flight finishes whole; then the process exits.
        client.join(15)
        assert not client.is_alive()
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        text = "".join(d.get("content") or "" for d in deltas)
        assert text == "x" * 20
        gw.proc.wait(20)  # the lifespan's exit bounds each step; 17 s at worst
        assert gw.proc.returncode in (0, -signal.SIGTERM)
    finally:
        gw.stop()

    # The stream's interaction record, logged when the stream ended, reached Redis.
    r = redis.Redis.from_url(redis_server.url)
    record = feedback_log.interaction(r, chunks[0]["id"])
    assert record is not None
    assert record["status"] == "ok"
    assert record["answer"] == "x" * 20
