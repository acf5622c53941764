"""The console and the report past the hot window: what Redis let go, read from the archive.

A real gateway (fixed upstream, real Redis) serves and takes ratings; the real archiver
copies them to the Delta tables; then the records leave Redis as expiry and trimming would make
them. The console still lists, searches and filters them (paged across the Redis→archive
boundary, each row once, tenants kept apart), and ``gateway report --since``, the admin
API and the console's report page count them from the archive.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.core import keys, stats
from gateway.ops.archive import Archive, Archiver

from .conftest import ADMIN, API_KEY, OTHER_TENANT_KEY
from .console_stack import REVIEWER_KEY, TENANT_REVIEWER_KEY, console_auth
from .fixed_gateway import fixed_gateway
from .polling import eventually
from .services import GatewayProcess
from .stores import STORES, Store, store_for

DB = 10  # this module's streams and records stay out of the other tests' database
REVIEWER = {"Authorization": f"Bearer {REVIEWER_KEY}"}
TENANT_REVIEWER = {"Authorization": f"Bearer {TENANT_REVIEWER_KEY}"}


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


# The UTC day this module started: no record of its tests is older. A window's last day
# is read when it is asked for (``today()``), so a run across midnight still covers all.
TODAY = today()


@dataclass
class Stack:
    gw: GatewayProcess
    redis: redis.Redis
    archive: Path
    ks: keys.Keyspace

    def archive_now(self) -> None:
        archiver = Archiver(self.redis, self.ks, Archive(str(self.archive)))
        try:
            result = archiver.run_once()
        finally:
            archiver.release()
        assert result.held_by is None and not result.expired


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, DB)


@pytest.fixture(scope="module")
def stack(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("archive-query")
    extra = {
        "auth": console_auth(),
        "console": {"page_size": 5},
        "archive": {"enabled": False, "url": str(work / "archive")},
    }
    with fixed_gateway(store, work, **extra) as (gw, _):
        client = store.client()
        yield Stack(gw, client, work / "archive", store.ks)
        client.close()


def experiment(stack: Stack, name: str, arms: list[dict[str, Any]]) -> str:
    r = httpx.put(f"{stack.gw.url}/admin/experiments/{name}", json={"arms": arms}, headers=ADMIN)
    assert r.is_success, r.text
    return name


def chat(
    stack: Stack, exp: str, texts: list[str], key: str = API_KEY, users: list[str] | None = None
) -> list[str]:
    ids = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
        for i, text in enumerate(texts):
            body = {
                "model": exp,
                "user": users[i] if users else f"user-{i}",
                "messages": [{"role": "user", "content": text}],
            }
            r = c.post(stack.gw.base_url + "/chat/completions", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
    eventually(
        lambda: stack.redis.exists(*[keys.interaction(i) for i in ids]) == len(ids),
        "the interaction log writes every answer",
    )
    return ids


def rate(stack: Stack, rid: str, rating: Any, key: str = API_KEY, **extra: Any) -> None:
    r = httpx.post(
        stack.gw.base_url + "/feedback",
        json={"response_id": rid, "rating": rating, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 201, r.text


def leave_redis(stack: Stack, ids: list[str], keep_stream_entries: bool = False) -> None:
    """What expiry and trimming do past ``hot_s``: the records go, and the stream entries
    up to the newest of them (kept: the stream is trimmed a little later)."""
    stack.redis.delete(*[keys.interaction(i) for i in ids])
    if keep_stream_entries:
        return
    wanted = set(ids)
    newest = max(
        keys.stream_id_order(keys.text(sid))
        for sid, f in stack.redis.xrange(stack.ks.interaction_stream)
        if keys.text(f[b"id"]) in wanted
    )
    trimmed = stack.redis.xtrim(
        stack.ks.interaction_stream, minid=f"{newest[0]}-{newest[1] + 1}", approximate=False
    )
    assert trimmed >= len(ids)


def listing(stack: Stack, headers: dict[str, str], **params: str) -> list[list[str]]:
    """Every page of the console's list: the response ids on each, in order."""
    pages = []
    query: dict[str, str] | str = params
    for _ in range(20):
        r = httpx.get(f"{stack.gw.url}/ui/interactions", params=query, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(re.findall(r'<a href="/ui/interactions/([^"?]+)">', r.text))
        more = re.search(r'<a href="/ui/interactions\?([^"]+)" rel="next"', r.text)
        if more is None:
            return pages
        query = html.unescape(more.group(1))
    raise AssertionError("the list did not end")


def flat(pages: list[list[str]]) -> list[str]:
    return [rid for page in pages for rid in page]


@pytest.mark.slow
def test_the_console_search_finds_thai_and_vietnamese_typed_in_either_unicode_form(
    stack: Stack,
) -> None:
    exp = experiment(stack, "search-languages", [{"model": "fixed-a"}])
    vietnamese = unicodedata.normalize("NFD", "Tôi để quên chiếc ô ở cửa hàng")  # as sent
    ids = chat(stack, exp, ["Where did I leave my UMBRELLA?", "ฉันลืมร่มไว้ที่ร้านค่ะ", vietnamese])
    searches = [
        ("umbrella", ids[0]),
        ("ลืมร่ม", ids[1]),  # Thai: a word inside a run without spaces
        ("chiếc ô", ids[2]),  # typed in NFC, stored in NFD
        (unicodedata.normalize("NFD", "CHIẾC Ô"), ids[2]),
    ]
    for q, want in searches:  # in Redis
        assert flat(listing(stack, REVIEWER, experiment=exp, q=q)) == [want], q
    stack.archive_now()
    leave_redis(stack, ids)
    for q, want in searches:  # in the archive
        assert flat(listing(stack, REVIEWER, experiment=exp, q=q)) == [want], q
    assert flat(listing(stack, REVIEWER, experiment=exp, q="chiec o")) == []  # no diacritics


def test_the_console_lists_and_searches_interactions_past_the_hot_window(stack: Stack) -> None:
    exp = experiment(stack, "archived-list", [{"model": "fixed-a"}])
    old = chat(stack, exp, [f"old question {i} about parcels" for i in range(6)])
    old += chat(stack, exp, ["old question about a lost umbrella"])
    theirs = chat(stack, exp, ["other tenant asks about socks"], key=OTHER_TENANT_KEY)
    rate(stack, old[1], "down", correction="It ships on Monday.")
    rate(stack, old[2], "down")
    stack.archive_now()
    hot = chat(stack, exp, [f"new question {i}" for i in range(4)])
    stack.archive_now()  # the new ones are archived and still hot
    rate(stack, old[3], "up")  # after the last pass: this rating is only in Redis
    leave_redis(stack, old + theirs)
    stack.redis.delete(stack.ks.feedback(old[2]))  # its rating now only in the archive
    leave_redis(stack, hot[:1], keep_stream_entries=True)  # the record went, the entry not yet

    newest_first = list(reversed(old + theirs + hot))
    pages = listing(stack, REVIEWER, experiment=exp)
    assert flat(pages) == newest_first  # each row once, paged across the boundary
    assert [len(p) for p in pages] == [5, 5, 2]
    first = httpx.get(
        f"{stack.gw.url}/ui/interactions", params={"experiment": exp}, headers=REVIEWER
    )
    # hot[0] (its record gone, its stream entry not yet) and theirs[0]; hot[1:] from Redis
    assert "2 of these are past the hot window" in first.text

    downs = flat(listing(stack, REVIEWER, experiment=exp, rating="down"))
    assert downs == [old[2], old[1]]  # old[2]'s rating from the archive's feedback files
    assert flat(listing(stack, REVIEWER, experiment=exp, corrected="1")) == [old[1]]
    assert flat(listing(stack, REVIEWER, experiment=exp, rating="up")) == [old[3]]
    assert flat(listing(stack, REVIEWER, experiment=exp, q="UMBRELLA")) == [old[6]]
    assert flat(listing(stack, REVIEWER, experiment=exp, arm="fixed-b")) == []
    assert flat(listing(stack, REVIEWER, experiment=exp, since=TODAY, until=today())) == (
        newest_first
    )
    assert flat(listing(stack, REVIEWER, experiment=exp, until="2000-01-01")) == []
    assert flat(listing(stack, REVIEWER, experiment=exp, tenant="other")) == theirs

    # a tenant reviewer sees only its tenant's rows, archived or not
    assert flat(listing(stack, TENANT_REVIEWER, experiment=exp)) == theirs
    one = httpx.get(f"{stack.gw.url}/ui/interactions/{old[1]}", headers=REVIEWER)
    assert one.status_code == 200 and "old question 1 about parcels" in one.text
    assert "It ships on Monday." in one.text
    gone = httpx.get(f"{stack.gw.url}/ui/interactions/{old[1]}", headers=TENANT_REVIEWER)
    assert gone.status_code == 404
    mine = httpx.get(f"{stack.gw.url}/ui/interactions/{theirs[0]}", headers=TENANT_REVIEWER)
    assert mine.status_code == 200 and "other tenant asks about socks" in mine.text


def report_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "report", *args, "--config", str(stack.gw.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_the_report_over_a_window_counts_what_was_sent_from_the_archive(stack: Stack) -> None:
    exp = experiment(stack, "archived-report", [{"model": "fixed-a"}])
    users = ["u0", "u0", "u1", "u2", "u2", "u3"]
    ids = chat(stack, exp, [f"report question {i}" for i in range(6)], users=users)
    rate(stack, ids[0], "down")
    rate(stack, ids[0], "up")  # replaced: the latest counts
    rate(stack, ids[1], "down")
    rate(stack, ids[2], "up")
    rate(stack, ids[3], "down", correction="Use the blue form.")
    rate(stack, ids[4], "down")  # u3 did not rate
    stack.archive_now()
    leave_redis(stack, ids)
    chat(stack, exp, ["not archived yet"])  # after the archive's last pass: not counted

    # per-user means: u0 (1 + 0) / 2, u1 1, u2 (0 + 0) / 2
    means = [0.5, 1.0, 0.0]
    sample = stats.Sample(3, sum(means), sum(m * m for m in means))
    lo, hi = sample.interval()

    done = report_cli(stack, exp, "--since", TODAY, "--json")
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    (arm,) = doc["arms"]
    assert arm["model"] == "fixed-a" and arm["requests"] == 6 and arm["errors"] == 0
    assert arm["latency_ms"]["p50"] is not None
    assert arm["tokens"]["completion"] > 0
    r = arm["ratings"]
    assert (r["users"], r["count"], r["all"], r["corrections"]) == (3, 5, 5, 1)
    assert r["mean_score"] == pytest.approx(0.5)
    assert r["ci95"] == [pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4)]
    assert doc["archive"]["archived_until"] <= time.time()
    start = time.mktime(time.strptime(TODAY, "%Y-%m-%d")) - time.timezone
    assert doc["archive"]["covers"] == [start, doc["archive"]["archived_until"]]

    table = report_cli(stack, exp, "--since", TODAY)
    assert table.returncode == 0, table.stderr
    assert "from the archive" in table.stdout and "not archived yet" in table.stdout

    url = f"{stack.gw.url}/admin/experiments/{exp}/report"
    api = httpx.get(url, params={"since": TODAY, "until": today()}, headers=ADMIN).json()
    assert api["arms"] == doc["arms"]
    bad = httpx.get(url, params={"since": "yesterday"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    backwards = httpx.get(url, params={"since": TODAY, "until": "2000-01-01"}, headers=ADMIN)
    assert backwards.status_code == 400 and backwards.json()["error"]["param"] == "until"
    nothing = httpx.get(url, params={"since": "2000-01-01", "until": "2000-01-02"}, headers=ADMIN)
    assert nothing.json()["arms"][0]["requests"] == 0

    page = httpx.get(f"{stack.gw.url}/ui/experiments/{exp}", params={"since": TODAY}, headers=ADMIN)
    assert page.status_code == 200, page.text
    window = page.text.split('id="h-window"', 1)[1].split("</section>", 1)[0]
    cells = re.findall(r"<td>([^<]*)</td>", window)
    assert cells[:2] == ["fixed-a", "6"] and "0.5" in window


@pytest.mark.slow
def test_one_workloads_requests_are_listed_and_reported_apart_hot_and_archived(
    stack: Stack,
) -> None:
    """Requests name their workload (``metadata.workload``); the console's list and the
    report over a window (CLI, admin API, console) take one workload's requests only."""
    exp = experiment(stack, "by-workload", [{"model": "fixed-a"}])
    asked = [
        ("refunds", "How do I get a refund for order 1001?"),
        ("orders", "Where is my parcel?"),
        ("refunds", "ฉันจะขอคืนเงินสำหรับคำสั่งซื้อหมายเลข 1002 ได้อย่างไร"),
        (None, "Hello?"),
        ("refunds", unicodedata.normalize("NFD", "Làm sao để tôi được hoàn tiền?")),
        ("orders", "Can I change the address?"),
    ]
    ids: dict[str | None, list[str]] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as c:
        for i, (workload, text) in enumerate(asked):
            body: dict[str, Any] = {
                "model": exp,
                "user": f"shopper-{i}",
                "messages": [{"role": "user", "content": text}],
            }
            if workload:
                body["metadata"] = {"workload": workload}
            r = c.post(stack.gw.base_url + "/chat/completions", json=body)
            assert r.status_code == 200, r.text
            ids.setdefault(workload, []).append(r.json()["id"])
    every = [rid for rids in ids.values() for rid in rids]
    eventually(
        lambda: stack.redis.exists(*[keys.interaction(i) for i in every]) == len(every),
        "the interaction log writes every answer",
    )
    rate(stack, ids["refunds"][0], "down")
    rate(stack, ids["orders"][0], "up")
    refunds, orders = ids["refunds"][::-1], ids["orders"][::-1]  # newest first

    def listed(workload: str) -> list[str]:
        return flat(listing(stack, REVIEWER, experiment=exp, workload=workload))

    assert (listed("refunds"), listed("orders"), listed("returns")) == (refunds, orders, [])
    page = httpx.get(
        f"{stack.gw.url}/ui/interactions", params={"workload": "not a name"}, headers=REVIEWER
    )
    assert page.status_code == 400 and "workload" in page.text
    stack.archive_now()
    leave_redis(stack, every)
    assert (listed("refunds"), listed("orders"), listed("returns")) == (refunds, orders, [])
    assert flat(listing(stack, REVIEWER, experiment=exp, workload="refunds", rating="down")) == [
        ids["refunds"][0]
    ]

    done = report_cli(stack, exp, "--since", TODAY, "--workload", "refunds", "--json")
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["workload"] == "refunds"
    (arm,) = doc["arms"]
    assert (arm["requests"], arm["ratings"]["all"], arm["ratings"]["mean_score"]) == (3, 1, 0.0)
    table = report_cli(stack, exp, "--since", TODAY, "--workload", "refunds")
    assert table.returncode == 0 and "workload refunds" in table.stdout, table.stderr
    live = report_cli(stack, exp, "--workload", "refunds")
    assert live.returncode == 1 and "--since" in live.stderr, live.stderr

    url = f"{stack.gw.url}/admin/experiments/{exp}/report"
    api = httpx.get(url, params={"since": TODAY, "workload": "orders"}, headers=ADMIN).json()
    (arm,) = api["arms"]
    assert (arm["requests"], arm["ratings"]["all"], arm["ratings"]["mean_score"]) == (2, 1, 1.0)
    everything = httpx.get(url, params={"since": TODAY}, headers=ADMIN).json()
    assert everything["workload"] is None and everything["arms"][0]["requests"] == 6
    for params, param in (
        ({"workload": "orders"}, "since"),  # the live report does not know workloads
        ({"since": TODAY, "workload": "ค่าส่ง"}, "workload"),
        ({"since": TODAY, "workload": ""}, "workload"),
    ):
        bad = httpx.get(url, params=params, headers=ADMIN)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == param, bad.text

    page = httpx.get(
        f"{stack.gw.url}/ui/experiments/{exp}",
        params={"since": TODAY, "workload": "refunds"},
        headers=ADMIN,
    )
    assert page.status_code == 200, page.text
    window = page.text.split('id="h-window"', 1)[1].split("</section>", 1)[0]
    assert "workload refunds" in window
    assert re.findall(r"<td>([^<]*)</td>", window)[:2] == ["fixed-a", "3"]


def test_paging_a_day_at_a_time_shows_every_row_once_across_days_and_budgets(
    tmp_path: Path,
) -> None:
    """Rows of three days (one logged just after midnight for a request of the day
    before: in the earlier day's partition), read with no time budget at all: each call
    reads one day and says where to go on; together they list every row once, newest
    first."""
    import pyarrow as pa

    from bench.storage import conversations
    from gateway.core.records import to_row
    from gateway.ops.archive import (
        COLUMNS,
        INTERACTIONS,
        archiver_app,
        arrow_schema,
        stream_version,
    )
    from gateway.ops.archive_query import ArchiveReader

    day0 = 1_764_460_800  # 2026-11-30 00:00 UTC
    times = [day0 + 3600, day0 + 7200, day0 + 86_399.9, day0 + 86_400 + 60, day0 + 2 * 86_400 + 5]
    logged = [t + 0.3 for t in times]  # the stream id: when the record was logged
    archive = Archive(str(tmp_path / "archive"))
    sids = []
    for i, (rec, t, at) in enumerate(zip(conversations(5, 1), times, logged, strict=True)):
        sid = f"{int(at * 1000)}-0"
        sids.append(sid)
        row = to_row(
            {**rec, "id": f"r{i}", "experiment": "ab", "created": int(t), "stream_id": sid},
            COLUMNS[INTERACTIONS],
        )
        table = pa.Table.from_pylist([row], schema=arrow_schema(INTERACTIONS))
        # one commit per row, each marking its stream id archived, as the archiver does
        archive.append(INTERACTIONS, table, {archiver_app(INTERACTIONS): stream_version(sid)})
    reader = ArchiveReader(archive)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        got, resume = reader.interactions(
            before=cursor, since_ms=None, until_ms=None, limit=10, budget_s=0
        )
        seen += [g.record["id"] for g in got]
        if resume is None:
            break
        cursor = resume
    assert seen == ["r4", "r3", "r2", "r1", "r0"]  # r2 (day 1's partition) logged on day 2
    everything, resume = reader.interactions(before=None, since_ms=None, until_ms=None, limit=2)
    assert [g.record["id"] for g in everything] == ["r4", "r3"] and resume is None
    after, _ = reader.interactions(before=sids[3], since_ms=None, until_ms=None, limit=2)
    assert [g.record["id"] for g in after] == ["r2", "r1"]
