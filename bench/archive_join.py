"""Joining ratings to archived interactions: what ``retrain build`` does past the hot window.

``python -m bench.archive_join [--rows 1000000] [--ratings 100000]`` writes an archive of
``--rows`` interactions (10 daily partitions, the archiver's schema and settings, each
request a 1.7 KB conversation) into a temporary directory, then times
``find_interactions`` for ``--ratings`` random response ids — the join step of a build
whose ratings all came after the hot window — and reports this process's peak RSS.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time

from gateway.archive import (
    COLUMNS,
    INTERACTIONS,
    Archive,
    arrow_schema,
    find_interactions,
)
from gateway.records import to_row

from .storage import conversations


def build_archive(root: str, rows: int, days: int = 10, per_file: int = 50_000) -> list[str]:
    """Write ``rows`` interactions as the archiver would; returns their ids."""
    import pyarrow as pa

    archive = Archive(root)
    template = conversations(per_file, 4, only_last=True)
    schema = arrow_schema(INTERACTIONS)
    files, ids = [], []
    for n in range(0, rows, per_file):
        day = f"2026-11-{1 + (n * days // rows):02d}"
        batch = []
        for i, rec in enumerate(template[: min(per_file, rows - n)]):
            rid = f"chatcmpl-bench{n + i:012d}"
            ids.append(rid)
            batch.append(
                to_row({**rec, "id": rid, "stream_id": f"{n + i}-0"}, COLUMNS[INTERACTIONS])
            )
        table = pa.Table.from_pydict(
            {c: [r[c] for r in batch] for c in schema.names}, schema=schema
        )
        rel = f"interactions/date={day}/exp=ab/part-{n}-0.parquet"
        size = archive.write_parquet(rel, table)
        files.append({"path": rel, "kind": INTERACTIONS, "rows": len(batch), "bytes": size})
    archive.write_manifest({"format": 1, "streams": {}, "files": files})
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_join", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ratings", type=int, default=100_000)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="flywheel-bench-join-")
    try:
        t0 = time.perf_counter()
        ids = build_archive(root, args.rows)
        built = time.perf_counter() - t0
        wanted = random.Random(1).sample(ids, args.ratings)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        found = find_interactions(Archive(root), wanted)
        seconds = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert len(found) == len(wanted)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"archive of {args.rows:,} interactions written in {built:.1f} s")
    print(f"{args.ratings:,} ratings joined in {seconds:.2f} s")
    print(f"peak RSS {rss / 1024:,.0f} MiB (before the join: {rss0 / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
