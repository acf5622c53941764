"""The console's list and the windowed report over the archive: how long DuckDB takes.

``python -m bench.archive_query [--rows 1000000] [--days 10]`` writes an archive of
``--rows`` interactions of the experiment ``ab`` (``--days`` daily partitions, the
archiver's schema and settings, each request a 1.7 KB conversation, two tenants) and a
rating for every tenth of them, into a temporary directory; then times, with
:class:`gateway.ops.archive_query.ArchiveReader` (what a console page runs past the hot
window, besides its few Redis reads):

* the newest page (6 rows: a page of 5 and one to know there is more), and a page from a
  cursor in the middle of the window;
* a page of one tenant, and a text search that matches nothing in one day (it reads the
  whole day);
* the ratings of a page's rows;
* the report over the whole window (``window_report``).

Each is run 5 times; the median is printed, with this process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.core.records import to_row
from gateway.ops.archive import (
    COLUMNS,
    FEEDBACK,
    INTERACTIONS,
    Archive,
    archiver_app,
    arrow_schema,
    stream_version,
)
from gateway.ops.archive_query import ArchiveReader, window_report

from .storage import conversations

DAY0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def build(root: str, rows: int, days: int, per_file: int = 50_000) -> None:
    """``rows`` interactions over ``days`` days (stream ids and times spread evenly),
    every tenth rated, written as the archiver writes them."""
    import pyarrow as pa

    archive = Archive(root)
    template = conversations(min(per_file, rows), 4, only_last=True)
    ix_schema, fb_schema = arrow_schema(INTERACTIONS), arrow_schema(FEEDBACK)
    step_ms = days * 86_400_000 // rows
    last_ix = last_fb = ""
    for n in range(0, rows, per_file):
        ix, fb = [], []
        for i, rec in enumerate(template[: min(per_file, rows - n)]):
            k = n + i
            ms = int(DAY0 * 1000) + k * step_ms
            rid = f"chatcmpl-bench{k:012d}"
            unit = f"u{k % 20_000}"
            row = {
                **rec,
                "id": rid,
                "experiment": "ab",
                "arm": rec["arm"],
                "assigned_arm": rec["arm"],
                "unit": unit,
                "forced": False,
                "tenant": "acme" if k % 4 else "globex",
                "created": ms // 1000,
                "stream_id": f"{ms}-0",
            }
            ix.append(to_row(row, COLUMNS[INTERACTIONS]))
            last_ix = row["stream_id"]
            if k % 10 == 0:
                score = 1.0 if (k // 10) % 3 else 0.0
                event = {
                    "v": 2,
                    "id": f"fb-{k}",
                    "object": "feedback",
                    "response_id": rid,
                    "rater": unit,
                    "rating": "up" if score else "down",
                    "score": score,
                    "failure": not score,
                    "has_correction": False,
                    "comment": None,
                    "correction": None,
                    "tags": [],
                    "tenant": row["tenant"],
                    "experiment": "ab",
                    "arm": rec["arm"],
                    "created": ms // 1000 + 60,
                    "stream_id": f"{ms + 60_000}-0",
                    "replaced": False,
                }
                fb.append(to_row(event, COLUMNS[FEEDBACK]))
                last_fb = event["stream_id"]
        for kind, all_rows, schema in ((INTERACTIONS, ix, ix_schema), (FEEDBACK, fb, fb_schema)):
            by_day: dict[str, list[dict[str, Any]]] = {}
            for r in all_rows:  # a file holds one day, as the archiver's do
                day = datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%d")
                by_day.setdefault(day, []).append(r)
            for day, part_rows in by_day.items():
                table = pa.Table.from_pydict(
                    {c: [r[c] for r in part_rows] for c in schema.names}, schema=schema
                )
                count = table.num_rows
                table = table.append_column(
                    "date", pa.array([day] * count, pa.string())
                ).append_column("exp", pa.array(["ab"] * count, pa.string()))
                last = last_ix if kind == INTERACTIONS else last_fb
                archive.append(kind, table, {archiver_app(kind): stream_version(last)})


def timed(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_query", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="flywheel-bench-query-")
    try:
        t0 = time.perf_counter()
        build(root, args.rows, args.days)
        print(
            f"archive of {args.rows:,} interactions over {args.days} days written in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        reader = ArchiveReader(Archive(root))
        mid_ms = int(DAY0 * 1000) + args.days * 86_400_000 // 2
        one_day = (int(DAY0 * 1000) + 86_400_000 * 3, int(DAY0 * 1000) + 86_400_000 * 4)

        def page(**kw: Any) -> Any:
            return reader.interactions(
                before=kw.pop("before", None),
                since_ms=kw.pop("since_ms", None),
                until_ms=kw.pop("until_ms", None),
                limit=6,
                experiment="ab",
                **kw,
            )

        results = {}
        results["newest page"], (newest, _) = timed(lambda: page())
        assert len(newest) == 6
        results["page from a cursor mid-window"], _ = timed(lambda: page(before=f"{mid_ms}-0"))
        results["page of one tenant"], _ = timed(lambda: page(tenants=("globex",)))
        results["search matching nothing, one day"], none = timed(
            lambda: page(q="zzqx-no-such-word", since_ms=one_day[0], until_ms=one_day[1])
        )
        assert none == ([], None)
        ids = [f.record["id"] for f in newest]
        results["ratings of a page"], _ = timed(lambda: reader.ratings(ids, "2026-11-01"))
        until = datetime.fromtimestamp(DAY0 + (args.days - 1) * 86_400, UTC).strftime("%Y-%m-%d")
        results[f"report over {args.days} days"], doc = timed(
            lambda: window_report(reader, "ab", ["m0", "m1"], "2026-11-01", until), runs=3
        )
        assert sum(a["requests"] for a in doc["arms"]) == args.rows
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, seconds in results.items():
        print(f"{name:36s} {seconds * 1000:8.0f} ms")
    print(f"peak RSS {rss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
