"""A forgotten user leaves no bytes: not in any key's ``DUMP``, not in the AOF files.

``XDEL`` only flags a stream entry deleted; its bytes stay in the listpack, which
``DUMP``, RDB snapshots and AOF rewrites serialise as they are. A real ``redis-server``
with ``appendonly yes`` (and ``rdbcompression no``, so a serialised string is its raw
bytes and a scan can see it) and a real gateway: a user's questions and the corrections
rated on their answers, in Thai, Vietnamese (NFC and NFD) and English, are forgotten;
then every key's ``DUMP`` (``SCAN``) and every file under the AOF directory are scanned
for each text's UTF-8 bytes, NFC and NFD. A consumer group that has not acknowledged
the other users' ratings keeps them pending, where it stood.
"""

from __future__ import annotations

import time
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.core import keys

from .conftest import ADMIN, CLIENT
from .fixed_gateway import fixed_gateway
from .polling import eventually
from .services import GatewayProcess, RedisProcess

GROUP = "retrain.bytes"


def texts(tag: str) -> list[str]:
    vi = f"Tôi muốn đổi đôi giày này sang cỡ lớn hơn được không {tag}"
    return [
        f"ฉันต้องการคืนรองเท้าคู่นี้เพราะมันเล็กเกินไป {tag}",
        unicodedata.normalize("NFC", vi),
        unicodedata.normalize("NFD", vi),
        f"Please send the replacement to my home address {tag}",
    ]


def forms(text: str) -> set[bytes]:
    return {unicodedata.normalize(f, text).encode() for f in ("NFC", "NFD")}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[GatewayProcess, RedisProcess]]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        redis.Redis(port=server.port).config_set("rdbcompression", "no")
        with fixed_gateway(server, tmp_path / "gw", 0) as (gw, _):
            yield gw, server
    finally:
        server.stop()


def ask_and_rate(gw: GatewayProcess, user: str, question: str, correction: str) -> str:
    body = {"model": "default", "user": user, "messages": [{"role": "user", "content": question}]}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=CLIENT)
    assert r.status_code == 200, r.text
    rid = str(r.json()["id"])
    rating = {"response_id": rid, "rating": "down", "correction": correction, "user": user}
    assert httpx.post(gw.base_url + "/feedback", json=rating, headers=CLIENT).status_code == 201
    return rid


def holders(r: redis.Redis, aof_dir: Path, needles: set[bytes]) -> list[str]:
    """Every key whose DUMP, and every AOF file, that holds one of ``needles``."""
    found = []
    for key in r.scan_iter(count=1000):
        dumped = r.dump(key)
        if dumped is not None and any(n in dumped for n in needles):
            found.append(f"DUMP {key.decode()}")
    for f in sorted(aof_dir.rglob("*")):
        if f.is_file() and any(n in f.read_bytes() for n in needles):
            found.append(f"file {f.name}")
    return found


@pytest.mark.slow
def test_a_forgotten_user_leaves_no_bytes_in_dumps_or_the_aof(
    stack: tuple[GatewayProcess, RedisProcess],
) -> None:
    gw, server = stack
    r = redis.Redis(port=server.port)
    aof_dir = server.workdir / str(r.config_get("appenddirname")["appenddirname"])
    stream = keys.PLAIN_KEYSPACE.feedback_stream
    gone, kept = texts(uuid.uuid4().hex[:8]), texts(uuid.uuid4().hex[:8])
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i, text in enumerate(gone):
        ask_and_rate(gw, "forget-me", text, "correction: " + text)
        ask_and_rate(gw, "keep-me", kept[i], "correction: " + kept[i])
    # the group has read every rating and acknowledged only the first
    read = r.xreadgroup(GROUP, "worker-1", {stream: ">"})
    delivered = [eid for eid, _ in read[0][1]]
    assert len(delivered) == 8
    r.xack(stream, GROUP, delivered[0])
    last_before = r.xinfo_stream(stream)["last-generated-id"]
    needles = set().union(*(forms(t) for t in gone))
    before = eventually(  # appendfsync everysec: the writes reach the AOF within a second
        lambda: (
            (found := holders(r, aof_dir, needles))
            and any(h.startswith("file ") for h in found)
            and found
        ),
        "the ratings' text is written to the AOF",
        timeout_s=5,
        every_s=0.2,
    )
    assert f"DUMP {stream}" in before and any(h.startswith("file ") for h in before), before

    done = httpx.delete(f"{gw.url}/admin/users/forget-me", headers=ADMIN, timeout=120)
    assert done.status_code == 200, done.text
    assert done.json()["removed"]["redis"]["aof_rewritten"] == 1

    deadline = time.monotonic() + 10  # Redis deletes the old AOF files in the background
    while (left := holders(r, aof_dir, needles)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"the forgotten text is still in {left}"
    # the other user's ratings are all there, and the group stands where it stood
    entries = r.xrange(stream)
    assert len(entries) == 4
    assert all(b"keep-me" in fields[b"data"] for _, fields in entries)
    kept_bytes = set().union(*(forms(t) for t in kept))
    assert any(n in r.dump(stream) for n in kept_bytes)
    assert r.xinfo_stream(stream)["last-generated-id"] == last_before
    group = next(g for g in r.xinfo_groups(stream) if g["name"] == GROUP.encode())
    assert group["last-delivered-id"] == last_before
    pending = r.xpending_range(stream, GROUP, "-", "+", 100)
    kept_ids = {eid for eid, _ in entries} - {delivered[0]}
    assert {p["message_id"] for p in pending} == kept_ids
    assert all(p["consumer"] == b"worker-1" and p["times_delivered"] == 1 for p in pending)
    assert r.xreadgroup(GROUP, "worker-1", {stream: ">"}) == []  # nothing delivered twice
    # a new rating gets a later id and reaches the group once
    ask_and_rate(gw, "keep-me", "one more question", "one more correction")
    fresh = r.xreadgroup(GROUP, "worker-2", {stream: ">"})
    assert len(fresh[0][1]) == 1 and fresh[0][1][0][0] > last_before
