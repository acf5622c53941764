"""``gateway serve --workers N``: one process archives, no worker carries its memory, and
every process's log lines say when, how severe and which process."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis

from .conftest import CLIENT
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_config
from .polling import eventually
from .services import GatewayProcess, RedisProcess

ARCHIVER_DB = 1  # (flushed first) this module's streams stay out of the other tests' way
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"\[(\d+)\] [\w.]+: "
)


def children(pid: int) -> dict[int, str]:
    """A process's children: pid → command line."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out[int(stat.parent.name)] = cmd
        except (OSError, IndexError, ValueError):
            continue
    return out


def maps_arrow(pid: int) -> bool:
    """Whether the process has Arrow (Parquet's library) in memory."""
    return "libarrow" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_one_archiver_process_serves_every_worker_and_every_line_names_its_process(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{ARCHIVER_DB}"
    redis.Redis.from_url(url).flushdb()
    upstream = FaultyUpstream().start()
    archive = tmp_path / "archive"
    config = fixed_config(
        upstream.base_url,
        url,
        archive={"url": str(archive), "every_s": 0.2, "max_wait_s": 0},
    )
    gw = GatewayProcess(config, tmp_path / "gw", workers=2)
    archivers: list[int] = []
    try:
        gw.start()
        body = {"model": "default", "messages": [{"role": "user", "content": "Hello"}]}
        reply = httpx.post(gw.base_url + "/chat/completions", json=body, headers=CLIENT)
        assert reply.status_code == 200, reply.text
        committed = archive / "interactions" / "_delta_log"
        eventually(lambda: any(committed.glob("*.json")), "an archive commit", 30)
        assert gw.proc is not None
        procs = children(gw.proc.pid)
        archivers += [p for p, cmd in procs.items() if "gateway archiver" in cmd]
        workers = [
            p for p, cmd in procs.items() if "multiprocessing" in cmd and "spawn_main" in cmd
        ]
        assert len(archivers) == 1 and len(workers) == 2, procs
        assert maps_arrow(archivers[0])
        assert not any(maps_arrow(w) for w in workers)  # the archive's memory is not theirs

        def lines_by_process() -> dict[int, list[str]]:
            by: dict[int, list[str]] = {}
            for line in gw.log_path.read_text().splitlines():
                if m := LINE.match(line):
                    by.setdefault(int(m.group(2)), []).append(line)
            return by

        def complete() -> dict[int, list[str]] | None:
            by = lines_by_process()
            started = all(
                any("Application startup complete" in line for line in by.get(w, []))
                for w in workers
            )
            archived = any("first files written" in line for line in by.get(archivers[0], []))
            return by if started and archived else None

        # the parent's, each worker's and the archiver's lines carry the time, the level
        # and the process id
        by = eventually(complete, "a line from every process", 30)
        assert gw.proc.pid in by
    finally:
        gw.stop()
        upstream.stop()
    assert not any(Path(f"/proc/{p}").exists() for p in archivers)  # stopped with the gateway
