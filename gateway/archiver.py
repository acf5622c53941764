"""The archiver in a process of its own: what ``gateway serve --workers N`` starts.

Archiving reads Parquet and DuckDB into memory (the imports, Arrow buffers of a batch):
about a hundred MiB the first time a process takes the archive lock. Each worker would
pay it in turn, so with several workers ``gateway serve`` starts this one process
(``gateway archiver``) and tells the workers (``FLYWHEEL_ARCHIVER=process``) to leave
archiving to it; the cost shows up once, in a process that serves no request. With one
worker the archiver stays a background task of that process. ``gateway archiver`` may
also run alone, e.g. as a sidecar: it takes the same lock as every other archiver.

It logs its resident memory before and after the first pass that wrote files, and
stops on SIGTERM (or when its parent dies) after the pass under way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from gateway.core import store
from gateway.core.config import Settings

log = logging.getLogger(__name__)

ARCHIVER_ENV = "FLYWHEEL_ARCHIVER"  # "process": a process of its own archives, not the app


def in_own_process() -> bool:
    """Whether this app leaves archiving to the archiver's own process."""
    return os.environ.get(ARCHIVER_ENV) == "process"


def rss_mib() -> float | None:
    """This process's resident memory (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run(settings: Settings) -> int:
    """Archive every ``archive.every_s`` until SIGTERM (the loop of ``gateway archiver``)."""
    from gateway.ops.archive import Archiver, open_archive

    store.set_parent_death_signal()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = settings.archive
    ks = store.keyspace(settings)
    if not settings.redis_url:
        log.error("gateway archiver: no redis_url (FLYWHEEL_REDIS_URL): nothing to archive")
        return 2
    client = store.connect_sync(settings.redis_url, cluster=ks.cluster, socket_timeout=60)
    archiver: Archiver | None = None
    before = rss_mib()
    wrote = False
    log.info("archiver started (RSS %.0f MiB)", before or 0)
    try:
        while not stop.is_set():
            try:
                if archiver is None:
                    archive = open_archive(settings.data_dir, cfg)
                    archiver = Archiver(
                        client, ks, archive, batch=cfg.batch, lock_ttl_s=cfg.lock_ttl_s
                    )
                result = archiver.run_once(True, cfg.max_wait_s)
                archiver.release()
                if result.files and not wrote:  # the first pass that wrote files
                    wrote = True
                    log.info(
                        "archiver: first files written (%d); RSS %.0f → %.0f MiB",
                        result.files,
                        before or 0,
                        rss_mib() or 0,
                    )
            except Exception as exc:  # noqa: BLE001 - the next pass retries
                log.warning("archive pass failed: %s", exc)
            stop.wait(cfg.every_s)
    finally:
        if archiver is not None:
            try:
                archiver.release()
            except Exception:  # noqa: BLE001 - Redis may be gone already
                pass
        client.close()
        log.info("archiver stopped")
    return 0


def start(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``gateway archiver`` as a child (its config and Redis from the environment,
    as the workers get theirs); it inherits stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "archiver"],
        env={**os.environ, **(env or {})},
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("archiver ignored SIGTERM for %g s: killed", timeout_s)
            proc.kill()
            proc.wait()
