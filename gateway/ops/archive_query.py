"""Queries over the archive with DuckDB (embedded, in-process): what Redis no longer holds.

Readers of the archive go through :class:`ArchiveReader`: it reads the files of each Delta
table's current snapshot (never a file of an uncommitted write, nor one a compaction or a
forget replaced), and of those only the partitions a query can touch (``date`` from its
time range, ``exp`` from its experiment: the log's partition values), so a query over
one day of one experiment does not open the rest.

* :meth:`ArchiveReader.interactions`: interactions newest first (by interaction-stream
  id, the order of the console's list), before a cursor, filtered by experiment, arm,
  tenant and text — the console's list past the hot window;
* :meth:`ArchiveReader.ratings`: the current ratings of some responses (the latest
  per response and rater: a replaced rating appears again in the feedback files);
* :meth:`ArchiveReader.report`: per-arm statistics of one experiment over a time window.

Every method blocks (DuckDB and file reads): call them from a thread
(``asyncio.to_thread``) in the gateway.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.core import stats
from gateway.core.config import Settings
from gateway.core.documents import ExperimentState
from gateway.core.records import (
    FeedbackEvent,
    InteractionRecord,
    feedback_event,
    from_row,
    interaction,
)
from gateway.core.text import nfc
from gateway.ops.archive import (
    COLUMNS,
    FEEDBACK,
    INTERACTIONS,
    Archive,
    _safe,
    default_url,
    version_stream_id,
)

StreamId = tuple[int, int]  # (ms, seq) of an interaction-stream id

# the stream id's parts as numbers (ids compare as (ms, seq), not as text)
_MS = "CAST(split_part(stream_id, '-', 1) AS BIGINT)"
_SEQ = "CAST(split_part(stream_id, '-', 2) AS BIGINT)"


def stream_id(text: str) -> StreamId:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _day_start_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def _next_day(day: str) -> str:
    return day_of(_day_start_ms(day) + 86_400_000)


def _previous_day(day: str) -> str:
    return day_of(_day_start_ms(day) - 86_400_000)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ArchiveError(OSError):
    """The archive could not be read (a missing or damaged file, a lost object store):
    an OSError, so ``store.translated`` answers it with 503."""


@dataclass
class Found:
    """One archived interaction, with its stream id (the console's cursor)."""

    stream_id: str
    record: InteractionRecord


class ArchiveReader:
    """Reads one :class:`~gateway.ops.archive.Archive` with DuckDB (thread-safe: each call
    has its own connection)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._lock = threading.Lock()
        self._db: Any = None

    # -- files -------------------------------------------------------------------------

    def newest(self) -> str | None:
        """The stream id of the newest archived interaction (the interactions table's
        archiver transaction id), None before the first commit."""
        version = self.archive.committed(INTERACTIONS)
        return None if version is None else version_stream_id(version)

    def archived_until(self) -> float | None:
        """When the newest archived interaction was logged (epoch seconds): the archive
        holds the interactions up to this time; later ones are only in Redis so far."""
        last = self.newest()
        return None if last is None else stream_id(last)[0] / 1000

    def files(
        self,
        kind: str,
        first_day: str | None = None,
        last_day: str | None = None,
        experiment: str | None = None,
    ) -> list[str]:
        """The committed files of ``kind`` in the days ``first_day``..``last_day``
        (inclusive, ``YYYY-MM-DD``; None: open) and of one ``experiment`` (``-``: direct
        model requests; None: all)."""
        return [
            path
            for path, day in self._dated(kind, experiment)
            if (first_day is None or day >= first_day) and (last_day is None or day <= last_day)
        ]

    def _connect(self) -> Any:
        """A cursor of this reader's DuckDB database (opening one costs ~0.1 s; a cursor
        is its own connection to it, for one thread)."""
        import duckdb

        with self._lock:
            if self._db is None:
                db = duckdb.connect()
                db.execute("SET threads TO 2")
                if not self.archive.local:  # s3://, gs://…: the archive's fsspec filesystem
                    db.register_filesystem(self.archive.fs)
                self._db = db
            return self._db.cursor()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        import duckdb

        try:
            with self._connect() as db:
                cursor = db.execute(sql, params or [])
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        except duckdb.Error as exc:
            raise ArchiveError(f"reading the archive failed: {exc}") from None

    def _columns(self, files: list[str]) -> set[str]:
        """The columns of ``files`` together (a file written before a column existed
        lacks it; a query naming a column no file has fails)."""
        import duckdb

        if not files:
            return set()
        try:
            with self._connect() as db:
                cursor = db.execute(f"SELECT * FROM {self._source(files)} LIMIT 0")
                return {d[0] for d in cursor.description}
        except duckdb.Error as exc:
            raise ArchiveError(f"reading the archive failed: {exc}") from None

    @staticmethod
    def _source(files: list[str]) -> str:
        listed = ", ".join(_quote(f) for f in files)
        return f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false)"

    # -- the console's list ------------------------------------------------------------

    def interactions(
        self,
        *,
        before: str | None,
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
        experiment: str = "",
        arm: str = "",
        workload: str = "",
        tenants: tuple[str, ...] = (),
        q: str = "",
        budget_s: float | None = None,
    ) -> tuple[list[Found], str | None]:
        """Up to ``limit`` interactions logged before the stream id ``before`` (None:
        the newest), at or after ``since_ms`` and before ``until_ms``, newest first; and,
        when ``budget_s`` ran out before ``limit`` were found, the cursor to go on from
        (None: nothing older matches).

        Read a day at a time, newest first, so a page reads about one day's files: the
        rows whose stream id falls on day D are in the partitions of D and D-1 (the
        partition is the day the request came, the stream id when it was logged).
        ``tenants``: each one must match (a tenant user's own, and the filter's). ``q``
        narrows to rows whose raw text contains it; the caller checks the text as the
        Redis path does (a JSON escape could make this wider, never narrower)."""
        hi_ms = None  # rows before it, in ms (exclusive)
        if before is not None:
            ms, seq = stream_id(before)
            hi_ms = ms + 1 if seq else ms
        if until_ms is not None:
            hi_ms = until_ms if hi_ms is None else min(hi_ms, until_ms)
        by_day: dict[str, list[str]] = {}
        for path, day in self._dated(INTERACTIONS, experiment or None):
            by_day.setdefault(day, []).append(path)
        first = None if since_ms is None else day_of(since_ms)
        last = None if hi_ms is None else day_of(hi_ms - 1)
        newest = self.newest()
        if newest is not None:  # nothing was logged on a later day
            newest_day = day_of(stream_id(newest)[0])
            last = newest_day if last is None else min(last, newest_day)
        windows = sorted({w for d in by_day for w in (d, _next_day(d))}, reverse=True)
        windows = [
            w for w in windows if (first is None or w >= first) and (last is None or w <= last)
        ]
        deadline = None if budget_s is None else time.monotonic() + budget_s
        where: list[str] = []
        params: list[Any] = []
        if before is not None:
            ms, seq = stream_id(before)
            where.append(f"({_MS} < ? OR ({_MS} = ? AND {_SEQ} < ?))")
            params += [ms, ms, seq]
        if until_ms is not None:
            where.append(f"{_MS} < ?")
            params.append(until_ms)
        if since_ms is not None:
            where.append(f"{_MS} >= ?")
            params.append(since_ms)
        if experiment:
            where.append("experiment = ?")
            params.append(experiment)
        if arm:
            where.append("arm = ?")
            params.append(arm)
        if workload:
            where.append("workload = ?")
            params.append(workload)
        for tenant in tenants:
            where.append("tenant = ?")
            params.append(tenant)
        if q:
            # NFC on both sides: text typed in one Unicode form finds it stored in another
            needle = nfc(q).lower()
            escaped = orjson.dumps(needle).decode()[1:-1]  # as it reads inside JSON text
            where.append(
                "(contains(lower(nfc_normalize(answer)), ?)"
                " OR contains(lower(nfc_normalize(messages)), ?))"
            )
            params += [needle, escaped]
        kinds = COLUMNS[INTERACTIONS]
        out: list[Found] = []
        for i, w in enumerate(windows):
            files = by_day.get(w, []) + by_day.get(_previous_day(w), [])
            if workload and "workload" not in self._columns(files):
                continue  # written before requests named a workload: none of its rows match
            start = _day_start_ms(w)
            sql = (
                f"SELECT * FROM {self._source(files)} WHERE {_MS} >= ? AND {_MS} < ? "
                f"{''.join(' AND ' + c for c in where)} "
                f"ORDER BY {_MS} DESC, {_SEQ} DESC LIMIT {int(limit - len(out))}"
            )
            for row in self._rows(sql, [start, start + 86_400_000, *params]):
                doc = from_row(row, kinds)
                sid = doc.pop("stream_id")
                out.append(Found(sid, interaction(doc)))
            if len(out) >= limit:
                return out, None
            if deadline is not None and time.monotonic() > deadline and i + 1 < len(windows):
                return out, f"{start}-0"  # everything from this day on is read
        return out, None

    def _dated(self, kind: str, experiment: str | None) -> list[tuple[str, str]]:
        """The files of ``kind``'s current snapshot (of one experiment) with their day."""
        exp = None if experiment is None else _safe(experiment)
        try:
            snapshot = self.archive.snapshot(kind)
        except Exception as exc:  # the log unreadable: a lost object store, a damaged file
            raise ArchiveError(f"reading the archive failed: {exc}") from None
        return [(path, day) for path, day, e in snapshot if exp is None or e == exp]

    def ratings(
        self, ids: list[str], since_day: str | None = None
    ) -> dict[str, list[FeedbackEvent]]:
        """The archived current ratings of ``ids`` (the latest per rater), by response
        id; ``since_day``: ratings are never older than their interaction's day."""
        if not ids:
            return {}
        files = self.files(FEEDBACK, since_day)
        if not files:
            return {}
        listed = ", ".join(_quote(i) for i in sorted(set(ids)))
        sql = (
            f"SELECT * FROM {self._source(files)} WHERE response_id IN ({listed}) "
            f"QUALIFY row_number() OVER (PARTITION BY response_id, rater "
            f"ORDER BY {_MS} DESC, {_SEQ} DESC) = 1"
        )
        kinds = COLUMNS[FEEDBACK]
        out: dict[str, list[FeedbackEvent]] = {}
        for row in self._rows(sql):
            doc = from_row(row, kinds)
            doc.pop("stream_id", None)
            doc.pop("replaced", None)
            event = feedback_event(doc)
            out.setdefault(event["response_id"], []).append(event)
        return out

    # -- the report over a window ------------------------------------------------------

    def report(
        self, experiment: str, since_s: float, until_s: float, workload: str | None = None
    ) -> dict[str, Any]:
        """Per-arm statistics of ``experiment``'s interactions logged in
        [``since_s``, ``until_s``) (of one ``workload`` when given), from the archive only
        (see :func:`window_report`).

        One pass over the window's interaction files (the columns it needs) into a temp
        table, one over the feedback files from its first day on; the rest is small."""
        import duckdb

        first_day = day_of(int(since_s * 1000))
        last_day = day_of(int(until_s * 1000) - 1)
        ix_files = self.files(INTERACTIONS, first_day, last_day, experiment)
        fb_files = self.files(FEEDBACK, first_day, None, experiment)
        out: dict[str, dict[str, dict[str, Any]]] = {"requests": {}, "rated": {}, "users": {}}
        if not ix_files or (workload and "workload" not in self._columns(ix_files)):
            return out
        by_workload = " AND workload = ?" if workload else ""
        steps = [
            (
                "ix",
                f"""
                CREATE TEMP TABLE ix AS
                SELECT id, arm, assigned_arm, unit, coalesce(forced, false) AS forced,
                       status, latency_ms, coalesce(fallback, false) AS fallback,
                       TRY_CAST(json_extract(usage, '$.prompt_tokens') AS BIGINT) AS prompt,
                       TRY_CAST(json_extract(usage, '$.completion_tokens') AS BIGINT) AS compl
                FROM {self._source(ix_files)}
                WHERE experiment = ? AND created >= ? AND created < ? AND shadow_of IS NULL
                {by_workload}
                """,
                [experiment, since_s, until_s, *([workload] if workload else [])],
            ),
            (
                "requests",
                """
                SELECT arm, count(*) AS n, count(*) FILTER (WHERE status = 'error') AS errors,
                       quantile_cont(latency_ms, 0.5) AS p50,
                       quantile_cont(latency_ms, 0.95) AS p95,
                       sum(prompt) AS prompt, sum(compl) AS compl
                FROM ix GROUP BY arm
                """,
                [],
            ),
            (
                "failed_over",
                "SELECT assigned_arm AS arm, count(*) AS n FROM ix WHERE fallback GROUP BY 1",
                [],
            ),
        ]
        if fb_files:
            steps += [
                (
                    "fb",
                    f"""
                    CREATE TEMP TABLE fb AS
                    SELECT i.arm, i.assigned_arm, i.unit, i.forced, f.score, f.failure,
                           f.has_correction
                    FROM (
                        SELECT response_id, score, failure, has_correction
                        FROM {self._source(fb_files)}
                        WHERE response_id IN (SELECT id FROM ix)
                        QUALIFY row_number() OVER (PARTITION BY response_id, rater
                                                   ORDER BY {_MS} DESC, {_SEQ} DESC) = 1
                    ) f JOIN ix i ON i.id = f.response_id
                    """,
                    [],
                ),
                (
                    "rated",
                    """
                    SELECT arm, count(*) AS n, count(*) FILTER (WHERE failure) AS failures,
                           count(*) FILTER (WHERE has_correction) AS corrections
                    FROM fb GROUP BY arm
                    """,
                    [],
                ),
                (
                    "users",
                    """
                    SELECT arm, count(*) AS users, sum(m) AS total, sum(m * m) AS squares,
                           sum(n) AS ratings
                    FROM (
                        SELECT assigned_arm AS arm, unit, avg(score) AS m, count(*) AS n
                        FROM fb WHERE unit IS NOT NULL AND NOT forced
                        GROUP BY assigned_arm, unit
                    ) GROUP BY arm
                    """,
                    [],
                ),
            ]
        results: dict[str, list[dict[str, Any]]] = {}
        try:
            with self._connect() as db:
                for name, sql, params in steps:
                    cursor = db.execute(sql, params)
                    if cursor.description:
                        names = [d[0] for d in cursor.description]
                        results[name] = [
                            dict(zip(names, v, strict=True)) for v in cursor.fetchall()
                        ]
        except duckdb.Error as exc:
            raise ArchiveError(f"reading the archive failed: {exc}") from None
        requests = out["requests"]
        for row in results.get("requests", []):
            requests[row["arm"]] = {
                **_no_requests(),
                "requests": row["n"],
                "errors": row["errors"],
                "latency_ms": {"p50": _r(row["p50"], 1), "p95": _r(row["p95"], 1)},
                "tokens": {"prompt": int(row["prompt"] or 0), "completion": int(row["compl"] or 0)},
            }
        for row in results.get("failed_over", []):
            requests.setdefault(row["arm"], _no_requests())["failed_over"] = row["n"]
        for row in results.get("rated", []):
            out["rated"][row["arm"]] = {
                "count": row["n"],
                "failures": row["failures"],
                "corrections": row["corrections"],
            }
        for row in results.get("users", []):
            out["users"][row["arm"]] = row
        return out


def feedback_events(
    reader: ArchiveReader, experiment: str | None, from_id: str
) -> list[tuple[str, FeedbackEvent, bool]]:
    """The archived rating events of ``experiment`` (None: of all) at or after the
    feedback-stream id ``from_id``, in stream order: (stream id, the rating as stored,
    whether it replaced one) — what a consumer group missed once the stream was trimmed
    past it."""
    ms, seq = stream_id(from_id)
    first_day = day_of(max(0, ms - 86_400_000))  # a rating's partition is its day
    files = reader.files(FEEDBACK, first_day, None, experiment)
    if not files:
        return []
    sql = (
        f"SELECT * FROM {reader._source(files)} "
        f"WHERE ({_MS} > ? OR ({_MS} = ? AND {_SEQ} >= ?)) "
        f"{'' if experiment is None else 'AND experiment = ? '}"
        f"ORDER BY {_MS}, {_SEQ}"
    )
    kinds = COLUMNS[FEEDBACK]
    out = []
    params: list[Any] = [ms, ms, seq] + ([] if experiment is None else [experiment])
    for row in reader._rows(sql, params):
        doc = from_row(row, kinds)
        sid = doc.pop("stream_id")
        replaced = bool(doc.pop("replaced", False))
        out.append((sid, feedback_event(doc), replaced))
    return out


def _no_requests() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "failed_over": 0,
        "latency_ms": {"p50": None, "p95": None},
        "tokens": {"prompt": 0, "completion": 0},
    }


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or x != x or x in (float("inf"), float("-inf")) else round(x, digits)


class BadWindow(ValueError):
    """A window's date is malformed or the window is empty; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_day(text: str, param: str) -> float:
    """``YYYY-MM-DD`` (UTC) as epoch seconds; :class:`BadWindow` names ``param``."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadWindow(
            f"'{param}' must be a date as YYYY-MM-DD; got '{text:.40}'.", param
        ) from None


def window_report(
    reader: ArchiveReader,
    experiment: str,
    arms: list[str],
    since: str,
    until: str | None = None,
    workload: str | None = None,
) -> dict[str, Any]:
    """The report of ``experiment`` over the days ``since``..``until`` (inclusive, UTC;
    ``until`` None: up to now), per arm, from the archive; of one ``workload``'s requests
    when given (``metadata.workload``; None: all).

    Only archived data counts: interactions the archiver has not copied yet (logged
    after ``archive.archived_until``) and ratings still only in Redis are not included,
    so the numbers of a window never change once it is archived. Ratings are the
    current ones (latest per response and rater) of the window's interactions, whenever
    they came; the mean score is the mean of the per-user mean scores (the unit the
    decider uses, by assigned arm, across the experiment's versions) with its 95%
    interval (:class:`gateway.core.stats.Sample`). Raises :class:`BadWindow` for a bad date.
    """
    start = parse_day(since, "since")
    end = parse_day(until, "until") + 86400 if until else time.time()
    if end <= start:
        raise BadWindow("'until' must not be before 'since'.", "until")
    raw = reader.report(experiment, start, end, workload)
    archived = reader.archived_until()
    seen = list(arms) + sorted(
        (set(raw["requests"]) | set(raw["rated"]) | set(raw["users"])) - set(arms)
    )
    out_arms = []
    for arm in seen:
        req = raw["requests"].get(arm, _no_requests())
        rated = raw["rated"].get(arm, {"count": 0, "failures": 0, "corrections": 0})
        u = raw["users"].get(arm)
        sample = stats.Sample(
            int(u["users"]) if u else 0,
            float(u["total"]) if u else 0.0,
            float(u["squares"]) if u else 0.0,
        )
        lo, hi = sample.interval()
        attempts = req["requests"] + req.get("failed_over", 0)
        out_arms.append(
            {
                "model": arm,
                "requests": req["requests"],
                "errors": req["errors"],
                "failed_over": req.get("failed_over", 0),
                "error_rate": _r((req["errors"] + req.get("failed_over", 0)) / attempts)
                if attempts
                else None,
                "latency_ms": req["latency_ms"],
                "tokens": req["tokens"],
                "ratings": {
                    "users": sample.n,
                    "count": int(u["ratings"]) if u else 0,
                    "all": rated["count"],
                    "mean_score": _r(sample.mean),
                    "ci95": [_r(lo), _r(hi)],
                    "failure_rate": _r(rated["failures"] / rated["count"])
                    if rated["count"]
                    else None,
                    "corrections": rated["corrections"],
                },
            }
        )
    return {
        "object": "experiment.window_report",
        "experiment": experiment,
        "workload": workload,
        "since": since,
        "until": until or datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d"),
        "generated_at": int(time.time()),
        "archive": {
            "archived_until": None if archived is None else int(archived),
            # the part of the window the archive holds (None: nothing archived yet)
            "covers": None
            if archived is None
            else [int(start), int(max(start, min(end, archived)))],
            "complete": archived is not None and archived >= end,
        },
        "arms": out_arms,
    }


async def windowed(
    settings: Settings,
    state: ExperimentState,
    since: str | None,
    until: str | None,
    workload: str | None = None,
) -> dict[str, Any]:
    """:func:`window_report` of an experiment's arms for the gateway (admin API, console,
    ``gateway report``): read in a thread from the configured archive; a bad window is the
    gateway's 400, an archive that cannot be read its 503."""
    import asyncio

    from gateway.core import store
    from gateway.core.errors import InvalidRequest

    if not since:
        raise InvalidRequest("A report window needs 'since' (YYYY-MM-DD).", param="since")
    url = default_url(settings.data_dir, settings.archive.url)
    arms = [a["model"] for a in state["spec"]["arms"]]
    try:
        with store.translated("The archive"):
            read = reader(url, settings.archive.storage_options)
            return await asyncio.to_thread(
                window_report, read, state["name"], arms, since, until, workload
            )
    except BadWindow as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


_READERS: dict[str, ArchiveReader] = {}
_READERS_LOCK = threading.Lock()


def reader(url: str, storage_options: dict[str, Any] | None = None) -> ArchiveReader:
    """One reader per archive URL in this process (its tables kept open, brought up to
    date at each query)."""
    with _READERS_LOCK:
        r = _READERS.get(url)
        if r is None:
            r = _READERS[url] = ArchiveReader(Archive(url, storage_options))
        return r


def days_around(ts: float) -> set[str]:
    """The partition days an interaction logged near ``ts`` may be in (clock skew between
    the id and the record: a minute either side)."""
    return {
        (datetime.fromtimestamp(ts, UTC) + timedelta(seconds=s)).strftime("%Y-%m-%d")
        for s in (-60, 0, 60)
    }


__all__ = [
    "ArchiveError",
    "ArchiveReader",
    "BadWindow",
    "Found",
    "days_around",
    "feedback_events",
    "parse_day",
    "reader",
    "stream_id",
    "window_report",
    "windowed",
]
