"""Joining ratings to archived interactions: what ``retrain build`` does past the hot window.

``python -m bench.archive_join [--rows 1000000] [--ratings 100000]`` writes an archive of
``--rows`` interactions (10 daily partitions, files of 50,000 as the archiver writes them,
each request a 1.7 KB conversation) into a temporary directory, then joins ``--ratings``
random response ids to it, once with each engine, each in a process of its own (so each
peak RSS is its own), and prints the time and peak RSS of each:

* ``duckdb`` — ``gateway.ops.archive.find_interactions``, what Flywheel runs: one DuckDB query
  over the committed files, the ids joined as a table;
* ``pyarrow`` — the same join as a ``pyarrow.dataset`` scan with an ``isin`` filter (what
  Flywheel ran before).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import orjson

from gateway.core.records import InteractionRecord
from gateway.ops.archive import (
    COLUMNS,
    INTERACTIONS,
    Archive,
    arrow_schema,
    arrow_table,
    find_interactions,
    records_of,
)

from .peak import peak_kib
from .storage import _text, conversations

ENGINES = ("duckdb", "pyarrow")


def build_archive(
    root: str,
    rows: int,
    fresh: set[int] | None = None,
    days: int = 10,
    per_file: int = 50_000,
    text: Callable[[int, random.Random, int], str] | None = None,
) -> list[str]:
    """Write ``rows`` interactions as the archiver would; returns their ids. A row whose
    number is in ``fresh`` gets a question and answer of its own (its conversation is new
    text: ``text(row, rng, characters)``, English-like words by default); the others
    repeat a file's worth of conversations, one per file."""
    import pyarrow as pa

    fresh = fresh or set()
    archive = Archive(root)
    template = conversations(per_file, 4, only_last=True)
    columns = {c: [r.get(c) for r in template] for c in COLUMNS[INTERACTIONS] if c != "stream_id"}
    table = arrow_table(INTERACTIONS, {**columns, "stream_id": [None] * len(template)})
    messages = [orjson.dumps(m) for m in columns["messages"]]
    names = table.column_names
    rng = random.Random(11)
    ids = []
    for n in range(0, rows, per_file):
        count = min(per_file, rows - n)
        day = f"2026-11-{1 + (n * days // rows):02d}"
        part = table.slice(0, count)
        new = [f"chatcmpl-bench{n + i:012d}" for i in range(count)]
        ids += new
        changed = {"id": new, "stream_id": [f"{n + i + 1}-0" for i in range(count)]}
        mine = [i for i in range(count) if n + i in fresh]
        if mine:
            changed["messages"], changed["answer"] = messages[:count], columns["answer"][:count]
            for i in mine:
                write = text or (lambda _row, rng, chars: _text(rng, chars))
                history = template[i]["messages"][:-1]
                question = {"role": "user", "content": write(n + i, rng, 130)}
                changed["messages"][i] = orjson.dumps([*history, question])
                changed["answer"][i] = write(n + i, rng, 200)
        for name, values in changed.items():
            part = part.set_column(names.index(name), name, pa.array(values, pa.string()))
        part = part.append_column("date", pa.array([day] * count, pa.string())).append_column(
            "exp", pa.array(["ab"] * count, pa.string())
        )
        archive.append(INTERACTIONS, part)  # one commit (and file) per batch
    return ids


def pyarrow_join(archive: Archive, ids: list[str]) -> dict[str, InteractionRecord]:
    """The join as a pyarrow dataset scan with an ``isin`` filter (the alternative)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    files = archive.files(INTERACTIONS)
    data = pads.dataset(files, schema=arrow_schema(INTERACTIONS), format="parquet")
    table = data.to_table(filter=pc.field("id").isin(sorted(set(ids))))
    return {rec["id"]: rec for rec in records_of(table)}


def join(root: str, engine: str, ratings: int, rows: int) -> None:
    """In a process of its own: join ``ratings`` ids sampled from the archive's rows."""
    wanted = [f"chatcmpl-bench{i:012d}" for i in random.Random(1).sample(range(rows), ratings)]
    archive = Archive(root)
    t0 = time.perf_counter()
    found = (find_interactions if engine == "duckdb" else pyarrow_join)(archive, wanted)
    seconds = time.perf_counter() - t0
    assert len(found) == len(wanted), (len(found), len(wanted))
    assert all(found[w]["messages"] for w in wanted[:100])
    cpu = sum(os.times()[:2])
    print(f"{seconds:.3f} {cpu:.2f} {peak_kib()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_join", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--engine", choices=ENGINES, action="append", help="default: both")
    parser.add_argument("--join-in", default=None, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.join_in:
        join(args.join_in, args.engine[0], args.ratings, args.rows)
        return
    root = tempfile.mkdtemp(prefix="flywheel-bench-join-")
    results = {}
    try:
        t0 = time.perf_counter()
        build_archive(root, args.rows)
        built = time.perf_counter() - t0
        size = sum(os.path.getsize(p) for p in Archive(root).files(INTERACTIONS))
        for engine in args.engine or ENGINES:
            argv = [sys.executable, "-m", "bench.archive_join", f"--rows={args.rows}"]
            argv += [f"--ratings={args.ratings}", f"--engine={engine}", f"--join-in={root}"]
            load = os.getloadavg()[0]
            done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
            seconds, cpu, peak = done.stdout.split()[-3:]
            results[engine] = (float(seconds), float(cpu), int(peak), load)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"archive of {args.rows:,} interactions ({size / 2**20:,.0f} MiB in "
        f"{args.rows // 50_000 + bool(args.rows % 50_000)} files) written in {built:.1f} s"
    )
    for engine, (seconds, cpu, peak, load) in results.items():
        print(
            f"{engine}: {args.ratings:,} ratings joined in {seconds:.2f} s (the process's CPU "
            f"{cpu:.1f} s), peak RSS {peak / 1024:,.0f} MiB; load average {load:.1f}"
        )


if __name__ == "__main__":
    main()
