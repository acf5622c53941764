"""Where a test's archive lives: a local directory or a prefix in a bucket of the S3
server the tests start (``S3Server``), read back the way an engine reads it (fsspec and
DuckDB), so one test checks both."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fsspec.implementations.local import LocalFileSystem

from .services import S3Server

PLACES = ["dir", "s3"]
# A data-path module's (store, archive place): one Redis and the cluster with a local
# directory, and one Redis with the object store (the cluster changes nothing there).
SETUPS = [
    pytest.param(("redis", "dir"), id="redis-dir"),
    pytest.param(("cluster", "dir"), id="cluster-dir", marks=pytest.mark.cluster),
    pytest.param(("redis", "s3"), id="redis-s3", marks=pytest.mark.s3),
]
BUCKET = "flywheel-archive"


@dataclass
class Place:
    url: str  # archive.url
    options: dict[str, Any]  # archive.storage_options
    fs: Any  # the fsspec filesystem the test reads with (its own, no shared caches)
    root: str  # url without its protocol (the filesystem's paths)
    s3: S3Server | None = None

    def config(self, **extra: Any) -> dict[str, Any]:
        """The config file's ``archive`` section for this place."""
        return {"url": self.url, "storage_options": self.options, **extra}

    def sub(self, name: str) -> Place:
        """Another archive beside this one."""
        return place_at(self.url + "/" + name, self.s3)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """What DuckDB reads: a path, or an s3:// URL through the registered filesystem."""
        return self.path(*parts) if self.s3 is None else "s3://" + self.path(*parts)

    def glob(self, *parts: str) -> list[str]:
        self.fs.invalidate_cache()
        return list(self.fs.glob(self.path(*parts)))

    def exists(self, *parts: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path(*parts)))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        self.fs.invalidate_cache()
        with duckdb.connect() as db:
            if self.s3 is not None:
                db.register_filesystem(self.fs)
            return db.execute(sql).fetchall()


def place_at(url: str, s3: S3Server | None) -> Place:
    if s3 is None:
        Path(url).mkdir(parents=True, exist_ok=True)
        return Place(url, {}, LocalFileSystem(), url)
    fs = s3.filesystem()
    return Place(url, s3.storage_options(), fs, url.removeprefix("s3://"), s3)


def new_place(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Place:
    """An empty archive location of ``kind`` (``dir``: under ``tmp``; ``s3``: a fresh
    prefix in a bucket of the session's S3 server)."""
    if kind == "dir":
        return place_at(str(tmp / "archive"), None)
    s3: S3Server = request.getfixturevalue("s3_server")
    fs = s3.filesystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)  # what an operator does once; the archive writes under it
    return place_at(f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}", s3)
