"""Every Redis key name Flywheel uses, and how values are encoded. Nothing else names keys.

Shared by the gateway (writer) and ``retrain`` (reader). Values are orjson-encoded
JSON documents unless noted.

==========================  ======  =================================================
key                         type    content
==========================  ======  =================================================
``fw:ix:{response_id}``     string  one interaction record (``records.pack``:
                                    compact, long messages as block hashes), expires
                                    after ``interaction_log.hot_s``
``fw:blk:{hash}``           string  one message (zlib JSON) by content hash, shared by
                                    every record that refers to it; its expiry moves
                                    on with each, so it outlives them all
``fw:forget:pending``       hash    ``{tenant}\x00{user}`` → a forgotten user whose
                                    dataset versions are not rewritten yet (JSON:
                                    ``user``, ``tenant``, ``by``, ``at``, the response
                                    ids, rating stream ids, units and block hashes
                                    found; no content), ``forget.py``
``fw:ix:stream``            stream  one entry per interaction (``id``, ``experiment``,
                                    ``arm``), in time order, trimmed to ``hot_s``; read
                                    by the archiver's consumer group (``archive``)
``fw:archive:lock``         string  held by the one archiver running (``archive.py``),
                                    renewed each pass; consumer group ``archive`` on
                                    both streams is where it stands
``fw:archive:pause``        string  set while a forget (``forget.py``) wants or holds
                                    the archive lock: archivers release it and pause
``fw:fb:{response_id}``     hash    rater → that rater's feedback record (JSON); one
                                    record per (response, rater)
``fw:fb:stream``            stream  one entry per rating event, field ``data`` (JSON);
                                    read by consumer groups, trimmed by retention but
                                    never past what a group has not acknowledged
``fw:fb:retrieval``         stream  one entry per retrieval feedback event (which
                                    passages helped a query and which did not), field
                                    ``data`` (JSON: ``response_id``, ``rater``,
                                    ``tenant``, ``model``, ``query``, ``relevant``,
                                    ``irrelevant``); read by ``retrain embed``, trimmed
                                    to the feedback retention; the latest event per
                                    (response, rater) is the one that counts
``fw:agg:{exp}:{arm}``      hash    ``count``, ``score_sum``, ``score_sq``, ``thumbs``,
                                    ``failures``, ``corrections`` of the current
                                    ratings of one arm (direct model requests use the
                                    experiment ``-``)
``fw:agg:index``            set     ``{exp}\x00{arm}`` of every aggregate hash
``fw:req:{exp}:{arm}``      hash    request statistics of one arm: ``requests``,
                                    ``errors``, ``cancelled``, ``failed_over``,
                                    ``prompt_tokens``, ``completion_tokens``,
                                    ``lat:{i}``, ``ttft:{i}`` (log-scale latency
                                    histograms in ms, see ``stats.py``)
``fw:vreq:{exp}:{ver}:{arm}`` hash  the same request statistics, of the requests
                                    served under version ``ver`` of the experiment
                                    (the decider's guardrails and cost); expires
                                    with the interaction records
``fw:users:{exp}:{ver}:{arm}`` set  units (hashed user keys) assigned to the arm by
                                    weight (not forced) under version ``ver`` (SRM)
``fw:uagg:{exp}:{ver}:{arm}`` hash  per-user scores of the arm under version ``ver``:
                                    ``u:{unit}`` → ``"count sum"`` of that user's
                                    ratings, and ``users``, ``mean_sum``, ``mean_sq``
                                    (sums of the per-user means), ``ratings``,
                                    ``thumbs`` — the decider's unit is the user
``fw:ctl:version``          string  counter, bumped by every change of the live state
``fw:ctl:experiments``      hash    name → live experiment state (JSON: ``version``,
                                    ``spec``, ``previous``, ``updated_at/_by``)
``fw:ctl:history:{exp}``    list    audit log of one experiment (JSON entries)
``fw:ctl:models``           hash    name → model version registered at runtime
``fw:ctl:models:history``   list    audit log of model registrations
``fw:auth:keys``            hash    key id → runtime API key (JSON: name, tenant, role,
                                    limits, budget, scope, expiry, SHA-256 ``digest``;
                                    never the key itself), part of the live state
``fw:auth:tenants``         hash    tenant → its policy (JSON: ``budget``)
``fw:auth:audit``           list    audit log of key and tenant changes (JSON entries:
                                    who, when, action, before, after)
``fw:spend:{scope}:{id}:{period}``  string  spend (float) of a key (``k``) or tenant
                                    (``t``) in one budget period; expires after it
``fw:spend:day:{date}``     hash    ``k:{key}``, ``t:{tenant}``, ``m:{model}`` → that
                                    UTC day's spend (float), kept 400 days
``fw:ctl:lock:{exp}``       string  held while one replica applies an auto decision
``fw:ctl:seq:{exp}:{ver}``  hash    arm → running minimum of the always-valid p-value
                                    over the decider's looks at version ``ver``
``fw:review:{exp}``         hash    response id → failure awaiting a correction (JSON)
``fw:build:lock:{exp}``     string  held while ``retrain build`` runs for an experiment
``fw:run:lock:{exp}``       string  held while ``retrain run`` runs for an experiment
``fw:job:{job_id}``         string  one fine-tuning job (JSON, ``retrain/jobs.py``)
``fw:jobs``                 zset    job ids by creation time
``fw:retrain:trained:{exp}`` hash   dataset version id → what training it ended in
                                    (JSON: ``outcome`` registered or rejected, ``job``,
                                    ``model``, ``at``); a version without one is trained
                                    by the next ``retrain run``
``fw:retrain:runs``         hash    experiment → its last ``retrain run`` (JSON:
                                    ``started``, ``finished``, ``outcome``,
                                    ``exit_code``, ``last_success``, ``job``,
                                    ``dataset``, ``examples``), read by ``/metrics``
``fw:rl:{key}:req|tok``     hash    a key's rate-limit buckets (``level``, ``ts``)
==========================  ======  =================================================

**Names under Redis Cluster** (``redis_cluster: true``). Braces above mark a
placeholder; on a cluster, braces in a name are a *hash tag* (only the part inside
decides the slot). The small shared state — every key above except two — is then
named ``{fw}:…`` instead of ``fw:…`` (``{fw}:ctl:version``, ``{fw}:fb:{response_id}``,
``{fw}:fb:stream``, …): one tag, so one slot, so each Lua script and transaction over
it stays atomic. What grows with traffic keeps its untagged name and spreads over every
master: ``fw:ix:{response_id}`` (use :data:`SPREAD` for such keys, and never touch them
in a script together with a shared key). A key's rate-limit buckets share a tag of
their own, its id: ``fw:rl:{<id>}:req`` and ``fw:rl:{<id>}:tok``. Without a cluster the
names are the ones in the table (an existing Redis keeps working unchanged).

:func:`configure` chooses the names for the process (the store's ``connect`` calls it);
read the names through this module at call time (``keys.FEEDBACK_STREAM``, never
``from gateway.core.keys import FEEDBACK_STREAM``), since it rebinds them.
"""

from __future__ import annotations

from typing import Any

import orjson

PLAIN_PREFIX = "fw:"
CLUSTER_PREFIX = "{fw}:"  # one hash tag: the shared state lives in one slot
SPREAD = "fw:"  # keys that grow with traffic: never tagged, spread over a cluster
PREFIX = PLAIN_PREFIX  # the shared state's prefix (configure() rebinds it)
CLUSTER = False
ARCHIVE_GROUP = "archive"  # the archiver's consumer group on both streams
NO_EXPERIMENT = "-"


def configure(cluster: bool) -> None:
    """Name keys for a Redis Cluster (hash-tagged shared state) or for one Redis."""
    global PREFIX, CLUSTER, INTERACTION_STREAM, FEEDBACK_STREAM, AGGREGATE_INDEX
    global CONTROL_VERSION, EXPERIMENTS, MODELS, MODELS_HISTORY, API_KEYS, TENANTS
    global AUTH_AUDIT, JOBS, RETRAIN_RUNS, ARCHIVE_LOCK, ARCHIVE_PAUSE, FORGET_PENDING
    global RETRIEVAL_STREAM
    CLUSTER = cluster
    PREFIX = CLUSTER_PREFIX if cluster else PLAIN_PREFIX
    INTERACTION_STREAM = PREFIX + "ix:stream"
    FEEDBACK_STREAM = PREFIX + "fb:stream"
    RETRIEVAL_STREAM = PREFIX + "fb:retrieval"
    AGGREGATE_INDEX = PREFIX + "agg:index"
    CONTROL_VERSION = PREFIX + "ctl:version"
    EXPERIMENTS = PREFIX + "ctl:experiments"
    MODELS = PREFIX + "ctl:models"
    MODELS_HISTORY = PREFIX + "ctl:models:history"
    API_KEYS = PREFIX + "auth:keys"
    TENANTS = PREFIX + "auth:tenants"
    AUTH_AUDIT = PREFIX + "auth:audit"
    JOBS = PREFIX + "jobs"
    RETRAIN_RUNS = PREFIX + "retrain:runs"
    ARCHIVE_LOCK = PREFIX + "archive:lock"
    ARCHIVE_PAUSE = PREFIX + "archive:pause"
    FORGET_PENDING = PREFIX + "forget:pending"


INTERACTION_STREAM: str
FEEDBACK_STREAM: str
RETRIEVAL_STREAM: str
AGGREGATE_INDEX: str
CONTROL_VERSION: str
EXPERIMENTS: str
MODELS: str
MODELS_HISTORY: str
API_KEYS: str
TENANTS: str
AUTH_AUDIT: str
JOBS: str
RETRAIN_RUNS: str
ARCHIVE_LOCK: str
ARCHIVE_PAUSE: str
FORGET_PENDING: str
configure(cluster=False)


def cluster_name(plain: str) -> str:
    """A key's name on a cluster, from its name on one Redis (``gateway migrate-keys``)."""
    if plain.startswith(f"{SPREAD}ix:") and plain != f"{PLAIN_PREFIX}ix:stream":
        return plain
    if plain.startswith(f"{SPREAD}blk:"):
        return plain
    if plain.startswith(f"{SPREAD}rl:"):
        account, _, bucket = plain.removeprefix(f"{SPREAD}rl:").rpartition(":")
        return f"{SPREAD}rl:{{{account}}}:{bucket}"
    return CLUSTER_PREFIX + plain.removeprefix(PLAIN_PREFIX)


def interaction(response_id: str) -> str:
    return f"{SPREAD}ix:{response_id}"


def rate_limit(account: str, bucket: str) -> str:
    """A key's ``req`` or ``tok`` bucket; on a cluster both share the key's own tag."""
    return f"{SPREAD}rl:{{{account}}}:{bucket}" if CLUSTER else f"{SPREAD}rl:{account}:{bucket}"


def block(content_hash: str) -> str:
    """A message block shared by the interactions that carry it (grows with traffic)."""
    return f"{SPREAD}blk:{content_hash}"


def feedback(response_id: str) -> str:
    return f"{PREFIX}fb:{response_id}"


def aggregate(experiment: str | None, arm: str) -> str:
    return f"{PREFIX}agg:{experiment or NO_EXPERIMENT}:{arm}"


def requests(experiment: str | None, arm: str) -> str:
    return f"{PREFIX}req:{experiment or NO_EXPERIMENT}:{arm}"


def version_requests(experiment: str, version: int, arm: str) -> str:
    return f"{PREFIX}vreq:{experiment}:{version}:{arm}"


def is_per_version(key: str) -> bool:
    """A per-version counter (``fw:vreq:*``): it expires with the interactions it counts."""
    return key.startswith((f"{PLAIN_PREFIX}vreq:", f"{CLUSTER_PREFIX}vreq:"))


def version_users(experiment: str, version: int, arm: str) -> str:
    return f"{PREFIX}users:{experiment}:{version}:{arm}"


def user_scores(experiment: str, version: int, arm: str) -> str:
    return f"{PREFIX}uagg:{experiment}:{version}:{arm}"


def sequential(experiment: str, version: int) -> str:
    return f"{PREFIX}ctl:seq:{experiment}:{version}"


def spend(scope: str, account: str, period: str) -> str:
    """Spend of a key (``scope`` ``k``) or tenant (``t``) in one budget period."""
    return f"{PREFIX}spend:{scope}:{account}:{period}"


def spend_day(date: str) -> str:
    return f"{PREFIX}spend:day:{date}"


def history(experiment: str) -> str:
    return f"{PREFIX}ctl:history:{experiment}"


def decision_lock(experiment: str) -> str:
    return f"{PREFIX}ctl:lock:{experiment}"


def retrain_group(experiment: str) -> str:
    """The feedback stream's consumer group that ``retrain build`` uses for an experiment."""
    return f"retrain.{experiment}"


def review(experiment: str) -> str:
    return f"{PREFIX}review:{experiment}"


def build_lock(experiment: str) -> str:
    return f"{PREFIX}build:lock:{experiment}"


def run_lock(experiment: str) -> str:
    return f"{PREFIX}run:lock:{experiment}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def trained(experiment: str) -> str:
    return f"{PREFIX}retrain:trained:{experiment}"


def aggregate_member(experiment: str | None, arm: str) -> str:
    return f"{experiment or NO_EXPERIMENT}\x00{arm}"


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def decode(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    doc = orjson.loads(raw)
    assert isinstance(doc, dict)
    return doc


def text(value: bytes | str) -> str:
    """A stream id or field as ``str`` (replies come as bytes unless decoding is on)."""
    return value.decode() if isinstance(value, bytes) else value


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``) as a sortable pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def stream_id_after(stream_id: str) -> str:
    """The smallest stream id greater than ``stream_id`` (an exclusive range start)."""
    ms, seq = stream_id_order(stream_id)
    return f"{ms}-{seq + 1}"
