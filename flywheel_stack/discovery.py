"""Where ``gateway up`` serves, for the commands run beside it.

``gateway up --port P --vllm-port Q`` writes ``data_dir/stack.json`` while it runs — the
gateway's URL, the vLLM server's and its own process id — and removes it when it stops.
A ``retrain`` command in the same directory with no config naming a gateway reads it
(:func:`running`), as it finds the embedded Redis under ``data_dir/redis``: so
``retrain run`` works against a stack on any ports. A file whose process is gone (``kill
-9``) is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STACK_FILE = "stack.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_url(host: str, port: int) -> str:
    """How a command on this machine reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - every interface: reach it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@contextmanager
def announced(data_dir: Path, *, gateway_url: str, vllm_base_url: str) -> Iterator[Path]:
    """``data_dir/stack.json`` while the block runs (written whole: temp file, rename)."""
    path = Path(data_dir) / STACK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"gateway_url": gateway_url, "vllm_base_url": vllm_base_url, "pid": os.getpid()}
    tmp = path.with_name(f".{STACK_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def running(data_dir: Path) -> dict[str, Any] | None:
    """The stack ``gateway up`` announced in ``data_dir``, or None (none, or its process
    is gone)."""
    try:
        doc = json.loads((Path(data_dir) / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int) or not _alive(doc["pid"]):
        return None
    if not isinstance(doc.get("gateway_url"), str) or not isinstance(doc.get("vllm_base_url"), str):
        return None
    return doc
