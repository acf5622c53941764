"""The archive: interactions and ratings copied from Redis to two Delta tables, exactly once.

A real gateway (scripted upstream, real Redis) serves and takes ratings; ``retrain
archive`` (a real process) copies them; DuckDB reads the files (the tables' snapshots,
and every Parquet file on disk). Killed at each step of a
pass, the archiver loses nothing and duplicates nothing on the next run. Every test runs
twice: the archive in a local directory and on an S3-compatible object store (a real
moto server, ``archive.url: s3://…``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from gateway.core import keys
from gateway.core.config import load_settings
from gateway.ops.archive import CRASH_ENV, Archive, Archiver
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from retrain.feedback_log import connect

from .archive_places import SETUPS, Place, new_place
from .polling import eventually
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess
from .stores import Store, store_for

ARCHIVE_DB = 14  # this module's streams stay out of the other tests' database
API_KEY = "sk-archive-0123456789"
ADMIN_KEY = "sk-archive-admin-0123456789"
CLIENT = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Served:
    gateway: GatewayProcess
    redis: redis.Redis
    config: Path
    archive: Place
    store: Store


@pytest.fixture(scope="module", params=SETUPS)
def setup(request: pytest.FixtureRequest) -> tuple[Store, str]:
    """The store (one Redis or the cluster) and where the archive lives (``dir``, ``s3``)."""
    store_kind, place_kind = request.param
    return store_for(request, ARCHIVE_DB, store_kind), place_kind


@pytest.fixture(scope="module")
def store(setup: tuple[Store, str]) -> Store:
    return setup[0]


@pytest.fixture(scope="module")
def served(
    setup: tuple[Store, str],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    store, place_kind = setup
    r = store.client()
    upstream = ScriptedUpstream({"helper": lambda ms: "We accept returns for thirty days"})
    upstream.start()
    work = tmp_path_factory.mktemp("archive")
    place = new_place(place_kind, request, work)
    config = {
        **store.config,
        "id_secret": "archive-secret-0123456789",
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops"}],
        },
        "upstreams": {"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        "models": {"helper": {"upstream": "scripted", "model": "helper"}},
        "experiments": {"shop": {"arms": [{"model": "helper"}]}},
        # every pass compacts a partition of more than one small file and vacuums what it
        # replaced at once: the files on disk are the snapshot's after each pass
        "archive": place.config(enabled=False, compact_files=1, vacuum_retention_hours=0),
    }
    gw = GatewayProcess(config, work)
    try:
        gw.start()
        yield Served(gw, r, gw.config_path, place, store)
    finally:
        gw.stop()
        upstream.stop()
        r.close()


def serve(served: Served, n: int, model: str = "shop", rate: bool = True) -> list[str]:
    """``n`` requests (each with its own question), each rated up: their response ids."""
    ids = []
    with httpx.Client(base_url=served.gateway.url, timeout=30) as c:
        for i in range(n):
            tag = uuid.uuid4().hex[:8]
            body = {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You help a shoe shop. " * 12},
                    {"role": "user", "content": f"Question {tag}: can I return shoes?"},
                ],
                "user": f"user-{i}",
            }
            reply = c.post("/v1/chat/completions", json=body, headers=CLIENT)
            assert reply.status_code == 200, reply.text
            rid = reply.json()["id"]
            ids.append(rid)
            if rate:
                fb = {"response_id": rid, "rating": "up", "comment": tag}
                rated = c.post("/v1/feedback", json=fb, headers=CLIENT)
                assert rated.status_code == 201, rated.text
    eventually(
        lambda: served.redis.exists(*[keys.interaction(i) for i in ids]) == len(ids),
        "the interaction log writes every answer",
        timeout_s=5,
        every_s=0.02,
    )
    # On a cluster the record and its stream entry are on different nodes, written by one
    # pipeline but not at one instant: an archive pass reads the stream.
    stream = served.store.ks.interaction_stream

    def streamed() -> bool:
        entries = served.redis.xrevrange(stream, count=len(ids) + 50)
        return set(ids) <= {fields[b"id"].decode() for _, fields in entries}

    eventually(streamed, "the interaction stream holds every answer", timeout_s=5, every_s=0.02)
    return ids


def archive(served: Served, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYWHEEL_CONFIG": str(served.config)}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "retrain", "archive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def committed(served: Served, kind: str) -> list[str]:
    """The files of the table's current snapshot."""
    return Archive(served.archive.url, served.archive.options).files(kind)


def query(served: Served, sql: str) -> list[tuple[Any, ...]]:
    return served.archive.query(sql)


def glob(served: Served, kind: str) -> str:
    pattern = served.archive.uri(kind, "*", "*", "*.parquet")
    return f"read_parquet('{pattern}', hive_partitioning=true)"


@pytest.mark.slow
def test_interactions_and_ratings_land_in_parquet_partitioned_by_date_and_experiment(
    served: Served,
) -> None:
    ids = serve(served, 4)
    direct = serve(served, 1, model="helper", rate=False)
    done = archive(served)
    assert done.returncode == 0, done.stderr
    assert "archived" in done.stdout
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert served.archive.glob("interactions", f"date={today}", "exp=shop", "*.parquet")
    assert served.archive.glob("interactions", f"date={today}", "exp=-", "*.parquet")
    rows = query(
        served,
        f"SELECT id, experiment, messages, user, date, exp FROM {glob(served, 'interactions')} "
        f"WHERE id IN ({', '.join(repr(i) for i in ids + direct)})",
    )
    assert sorted(r[0] for r in rows) == sorted(ids + direct)
    by_id = {r[0]: r for r in rows}
    sent = orjson.loads(by_id[ids[0]][2])
    assert sent[0]["content"] == "You help a shoe shop. " * 12  # whole again, not a block
    assert by_id[ids[0]][1] == "shop" and by_id[direct[0]][1] is None
    assert by_id[ids[0]][5] == "shop" and by_id[direct[0]][5] == "-"
    assert by_id[ids[0]][3] == "user-0" and str(by_id[ids[0]][4]) == today
    ratings = query(
        served,
        f"SELECT response_id, score, rater FROM {glob(served, 'feedback')} "
        f"WHERE response_id IN ({', '.join(repr(i) for i in ids)})",
    )
    assert sorted(r[0] for r in ratings) == sorted(ids)
    assert {r[1] for r in ratings} == {1.0}
    # everything read was acknowledged: a second pass has nothing to do
    again = archive(served)
    assert again.returncode == 0 and "archived 0 interactions and 0 ratings" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("step", ["after-read", "after-commit", "after-ack", "after-compact"])
def test_an_archiver_killed_at_any_step_loses_nothing_and_duplicates_nothing(
    served: Served, step: str
) -> None:
    archive(served)  # start from a drained stream
    ids = serve(served, 3)
    crashed = archive(served, crash_at=step)
    assert crashed.returncode == 137, crashed.stderr
    done = archive(served)
    assert done.returncode == 0, done.stderr
    wanted = ", ".join(repr(i) for i in ids)
    for kind, column in (("interactions", "id"), ("feedback", "response_id")):
        files = committed(served, kind)
        listed = ", ".join(repr(f) for f in files)
        in_snapshot = query(
            served,
            f"SELECT {column}, count(*) FROM read_parquet([{listed}]) "
            f"WHERE {column} IN ({wanted}) GROUP BY 1",
        )
        assert sorted(in_snapshot) == sorted((i, 1) for i in ids), (kind, step)
        on_disk = query(
            served,
            f"SELECT {column}, count(*) FROM {glob(served, kind)} "
            f"WHERE {column} IN ({wanted}) GROUP BY 1",
        )
        assert sorted(on_disk) == sorted((i, 1) for i in ids), (kind, step)
    for stream in (served.store.ks.interaction_stream, served.store.ks.feedback_stream):
        assert served.redis.xpending(stream, keys.ARCHIVE_GROUP)["pending"] == 0


def test_one_archiver_at_a_time(served: Served) -> None:
    served.redis.set(served.store.ks.archive_lock, "elsewhere:1:abc", px=60_000)
    try:
        busy = archive(served)
        assert busy.returncode == 5 and "elsewhere:1:abc" in busy.stderr
    finally:
        served.redis.delete(served.store.ks.archive_lock)


@pytest.mark.slow
def test_the_gateway_archives_by_itself(tmp_path: Path, served: Served) -> None:
    config = yaml.safe_load(served.config.read_text())
    place = served.archive.sub(f"gw-{uuid.uuid4().hex[:6]}")
    config["archive"] = place.config(every_s=0.2, max_wait_s=0)
    gw = GatewayProcess(config, tmp_path / "gw", workers=2)
    try:
        gw.start()
        here = Served(gw, served.redis, gw.config_path, place, served.store)
        ids = serve(here, 2)
        deadline = time.monotonic() + 30
        found: list[tuple[Any, ...]] = []
        pattern = f"'{place.uri('interactions', '*', '*', '*.parquet')}'"
        while time.monotonic() < deadline:
            if place.glob("interactions", "*", "*", "*.parquet"):
                found = query(
                    here,
                    f"SELECT id FROM read_parquet({pattern}) "
                    f"WHERE id IN ({', '.join(repr(i) for i in ids)})",
                )
                if len(found) == len(ids):
                    break
            time.sleep(0.2)
        assert sorted(r[0] for r in found) == sorted(ids)
    finally:
        gw.stop()


LATE_DB = 15  # on one Redis, a gateway whose hot window is two seconds has its own database


@pytest.mark.slow
def test_a_rating_after_the_hot_window_joins_through_the_archive_and_trains(
    tmp_path: Path, served: Served
) -> None:
    if served.store.cluster:  # the cluster has one database: the experiment is its own
        url = served.store.url
    else:
        url = served.store.url.rsplit("/", 1)[0] + f"/{LATE_DB}"
        with redis.Redis.from_url(url) as fresh:
            fresh.flushdb()
    r = served.store.client() if served.store.cluster else redis.Redis.from_url(url)
    config = yaml.safe_load(served.config.read_text())
    place = served.archive.sub(f"late-{uuid.uuid4().hex[:6]}")
    config.update(
        redis_url=url,
        experiments={"late": {"arms": [{"model": "helper"}]}},
        interaction_log={"hot_s": 2},
        archive=place.config(every_s=0.2, max_wait_s=0),
    )
    gw = GatewayProcess(config, tmp_path / "gw")
    try:
        gw.start()
        messages = [{"role": "user", "content": "How long do refunds take?"}]
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            reply = c.post(
                "/v1/chat/completions",
                json={"model": "late", "messages": messages, "user": "late-user"},
                headers=CLIENT,
            )
            assert reply.status_code == 200, reply.text
            rid = reply.json()["id"]
            deadline = time.monotonic() + 30
            while r.exists(keys.interaction(rid)) or not place.exists("interactions", "_delta_log"):
                assert time.monotonic() < deadline, "the record did not leave Redis"
                time.sleep(0.2)
            fix = "Refunds reach your card within five working days."
            rated = c.post(
                "/v1/feedback",
                json={"response_id": rid, "rating": "down", "correction": fix},
                headers=CLIENT,
            )
            assert rated.status_code == 201, rated.text
        doc = yaml.safe_load(gw.config_path.read_text())
        doc["retrain"] = {
            "dataset_dir": str(tmp_path / "datasets"),
            "min_examples": 1,
            "split": {"validation": 0, "test": 0},
        }
        path = tmp_path / "retrain.yaml"
        path.write_text(yaml.safe_dump(doc))
        settings = load_settings(path, schema=RetrainSettings)
        result = Builder(connect(settings), served.store.ks, settings, "late").run()
        assert result.status == "written", result.message
        train = [
            orjson.loads(line) for line in (result.path / "train.jsonl").read_text().splitlines()
        ]
        assert train == [{"messages": [*messages, {"role": "assistant", "content": fix}]}]
        out = tmp_path / "export.jsonl"
        exported = subprocess.run(
            [sys.executable, "-m", "retrain", "export-feedback", "--since", "2000-01-01"]
            + ["--out", str(out), "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert exported.returncode == 0, exported.stderr
        exported_lines = [orjson.loads(x) for x in out.read_text().splitlines()]
        # (on the cluster the module's other ratings share the store: this one is ours)
        (line,) = [x for x in exported_lines if x["response_id"] == rid]
        assert line["interaction"]["messages"] == messages
        assert [r["correction"] for r in line["ratings"]] == [fix]
    finally:
        gw.stop()
        r.close()


def test_the_documented_duckdb_query_reads_the_archive(served: Served) -> None:
    ids = serve(served, 2)
    assert archive(served).returncode == 0
    page = (Path(__file__).resolve().parents[1] / "docs" / "archive.md").read_text()
    sql = page.split("```sql\n", 1)[1].split("```", 1)[0]
    rows = query(served, sql.replace("ARCHIVE", served.archive.uri()))
    assert ("shop", "helper") in {(r[0], r[1]) for r in rows}
    shop = next(r for r in rows if r[0] == "shop")
    rated = query(served, f"SELECT count(*) FROM {glob(served, 'feedback')} WHERE exp = 'shop'")[0][
        0
    ]
    assert shop[2] == rated >= len(ids) and shop[3] == 1.0


def test_the_gateway_archiver_waits_for_a_full_file_or_max_wait(
    served: Served, tmp_path: Path
) -> None:
    archive(served)  # start from a drained stream
    ids = serve(served, 3, rate=False)
    place = served.archive.sub(f"waiting-{uuid.uuid4().hex[:6]}")
    archiver = Archiver(served.redis, served.store.ks, Archive(place.url, place.options), batch=10)
    try:
        waiting = archiver.run_once(max_wait_s=3600)  # 3 of 10, and just arrived: wait
        assert waiting.written == {"interactions": 0, "feedback": 0}
        assert not place.glob("interactions", "*", "*", "*.parquet")
        archiver.batch = 3  # now a full file waits
        full = archiver.run_once(max_wait_s=3600)
        assert full.written["interactions"] == len(ids)
    finally:
        archiver.release()


def test_steady_small_passes_do_not_leave_tiny_files_forever(served: Served) -> None:
    """A pass after each few requests writes a small file each time; the pass's upkeep
    compacts a partition past ``compact_files`` small files and vacuums what it
    replaced: the partition stays at a few files, every row once, and nothing else on
    disk."""
    archive(served)  # start from a drained stream
    place = served.archive.sub(f"steady-{uuid.uuid4().hex[:6]}")
    table = Archive(place.url, place.options, compact_files=3, vacuum_retention_hours=0)
    archiver = Archiver(served.redis, served.store.ks, table)
    ids: list[str] = []
    most = 0
    try:
        for _ in range(8):
            ids += serve(served, 1, rate=False)
            assert archiver.run_once().written["interactions"] == 1
            most = max(most, len(table.files("interactions")))
    finally:
        archiver.release()
    assert most <= 4  # never more than compact_files + the pass's own
    snapshot = table.files("interactions")
    on_disk = place.glob("interactions", "*", "*", "*.parquet")
    assert len(on_disk) == len(snapshot) < 8
    wanted = ", ".join(repr(i) for i in ids)
    every_file = place.uri("interactions", "*", "*", "*.parquet")
    rows = query(
        served,
        f"SELECT id, count(*) FROM read_parquet('{every_file}') WHERE id IN ({wanted}) GROUP BY 1",
    )
    assert sorted(rows) == sorted((i, 1) for i in ids)


@pytest.mark.slow
def test_the_table_log_is_bounded_by_its_retention_and_keeps_the_archivers_place(
    tmp_path: Path,
) -> None:
    """Every commit adds a file to the table's log; with ``log_retention_hours`` the
    checkpoint that delta-rs writes every 100 commits deletes the older ones, on a table
    made before the setting too (upkeep sets it), and the archiver's transaction id —
    where exactly-once resumes — lives on in the checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gateway.ops.archive import COLUMNS, arrow_table

    def rows(n: int) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [None] for name in COLUMNS["interactions"]}
        columns.update(id=[f"r-{n}"], stream_id=[f"{n}-0"], created=[1_764_500_000.0 + n])
        return arrow_table("interactions", columns)

    url = str(tmp_path / "archive")
    Archive(url).append("interactions", rows(0), {"archiver-interactions": 0})  # 24 h
    table = Archive(url, log_retention_hours=0, vacuum_retention_hours=0)
    table.upkeep("interactions")
    for n in range(1, 121):
        table.append("interactions", rows(n), {"archiver-interactions": n})
    log = tmp_path / "archive" / "interactions" / "_delta_log"
    commits = sorted(log.glob("*.json"))
    assert len(commits) <= 100 < table.table("interactions").version(), commits[:3]
    assert list(log.glob("*.checkpoint.parquet"))
    assert Archive(url).committed("interactions") == 120
    ids = Archive(url).table("interactions").to_pyarrow_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(f"r-{n}" for n in range(121))

    # A compaction replaces the 121 small files; a checkpoint after it does not carry
    # their record (tombstones) past the vacuum's retention (0 here).
    assert table.upkeep("interactions", force=True)["files_removed"] == 121
    for n in range(121, 221):
        table.append("interactions", rows(n), {"archiver-interactions": n})
    (newest,) = sorted(log.glob("*.checkpoint.parquet"))[-1:]
    removes = pq.read_table(newest, columns=["remove"])["remove"]
    assert removes.null_count == len(removes)  # no tombstone in it
    assert Archive(url).committed("interactions") == 220


def _old_layout(place: Place) -> tuple[dict[str, list[str]], str]:
    """An archive written the earlier way (pyarrow Parquet files under
    ``date=…/exp=…`` and the ``manifest.json`` that lists them), with text in English,
    Thai and Vietnamese (NFC and NFD); and a file of a pass that died before its
    manifest (no manifest names it). Returns the ids per kind and the last stream id."""
    import unicodedata

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gateway.core.records import SCHEMA_VERSION, to_row
    from gateway.ops.archive import COLUMNS, arrow_schema

    from .multilingual import ANSWERS

    texts = [unicodedata.normalize(form, t) for t in ANSWERS.values() for form in ("NFC", "NFD")]
    created = 1_764_500_000
    day = time.strftime("%Y-%m-%d", time.gmtime(created))
    files: list[dict[str, Any]] = []
    ids: dict[str, list[str]] = {"interactions": [], "feedback": []}
    sid = ""
    for n, text in enumerate(texts):
        sid = f"{created * 1000 + n}-0"
        exp = "shop" if n % 2 else "-"
        rid = f"old-{n}"
        ix = {
            "v": SCHEMA_VERSION,
            "id": rid,
            "stream_id": sid,
            "created": created,
            "experiment": "shop" if n % 2 else None,
            "user": f"old-user-{n}",
            "answer": text,
            "messages": [{"role": "user", "content": text}],
        }
        fb = {
            "v": SCHEMA_VERSION,
            "stream_id": sid,
            "response_id": rid,
            "rater": f"old-user-{n}",
            "score": 1.0,
            "comment": text,
            "created": created,
            "experiment": ix["experiment"],
            "replaced": False,
        }
        for kind, doc in (("interactions", ix), ("feedback", fb)):
            rel = f"{kind}/date={day}/exp={exp}/part-{sid}.parquet"
            row = to_row(doc, COLUMNS[kind])
            place.fs.makedirs(place.path(rel).rsplit("/", 1)[0], exist_ok=True)
            with place.fs.open(place.path(rel), "wb") as f:
                pq.write_table(pa.Table.from_pylist([row], schema=arrow_schema(kind)), f)
            files.append({"path": rel, "kind": kind, "rows": 1})
            ids[kind].append(rid)
    stray = f"interactions/date={day}/exp=-/part-9-0.parquet"  # no manifest names it
    with place.fs.open(place.path(stray), "wb") as f:
        row = to_row({"id": "never-committed", "created": created}, COLUMNS["interactions"])
        pq.write_table(pa.Table.from_pylist([row], schema=arrow_schema("interactions")), f)
    manifest = {
        "format": 1,
        "streams": {k: {"last_id": sid} for k in ids},
        "files": files,
    }
    with place.fs.open(place.path("manifest.json"), "wb") as f:
        f.write(orjson.dumps(manifest))
    return ids, sid


def test_an_archive_of_the_manifest_layout_migrates_once_with_every_row(
    served: Served, tmp_path: Path
) -> None:
    import unicodedata

    from gateway.ops.archive import archiver_app, stream_version
    from gateway.ops.archive_query import ArchiveReader

    from .multilingual import ANSWERS

    place = served.archive.sub(f"old-{uuid.uuid4().hex[:6]}")
    ids, last = _old_layout(place)
    config = yaml.safe_load(served.config.read_text())
    config["archive"] = place.config(enabled=False)
    path = tmp_path / "migrate.yaml"
    path.write_text(yaml.safe_dump(config))

    def migrate() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLYWHEEL_CONFIG": str(path)}
        env.pop(CRASH_ENV, None)
        return subprocess.run(
            [sys.executable, "-m", "retrain", "archive", "--migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = migrate()
    assert done.returncode == 0, done.stderr
    assert "migrated 12 rows" in done.stdout
    table = Archive(place.url, place.options)
    versions = {k: table.table(k).version() for k in ids}
    for kind, column in (("interactions", "id"), ("feedback", "response_id")):
        listed = ", ".join(repr(f) for f in table.files(kind))
        rows = query(served, f"SELECT {column}, count(*) FROM read_parquet([{listed}]) GROUP BY 1")
        assert sorted(rows) == sorted((i, 1) for i in ids[kind]), kind
        assert table.committed(kind) == stream_version(last)  # the archiver goes on after it
        assert table.committed(kind, archiver_app(kind)) == stream_version(last)
    # the text comes back as it was written, in either Unicode form
    reader = ArchiveReader(table)
    found, _ = reader.interactions(before=None, since_ms=None, until_ms=None, limit=20)
    answers = {f.record["id"]: f.record["answer"] for f in found}
    expected = [unicodedata.normalize(f, t) for t in ANSWERS.values() for f in ("NFC", "NFD")]
    assert [answers[f"old-{n}"] for n in range(len(expected))] == expected
    assert not place.exists("manifest.json") and place.exists("manifest.json.migrated")

    again = migrate()  # nothing left to migrate: nothing changes
    assert again.returncode == 0 and "migrated 0 rows" in again.stdout, again.stdout
    assert {k: Archive(place.url, place.options).table(k).version() for k in ids} == versions
