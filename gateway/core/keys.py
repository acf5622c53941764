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
                                    record per (response, rater); expires
                                    ``feedback.hot_s`` after the response's last rating
``fw:fb:stream``            stream  one entry per rating event, field ``data`` (JSON);
                                    read by consumer groups; trimmed once archived and
                                    older than ``feedback.hot_s`` whatever the groups
                                    do (without an archiver: by retention, never past
                                    what a group has not acknowledged)
``fw:fb:stream:rewrite``    stream  transient: the feedback stream rebuilt without a
                                    forgotten user's entries (same ids, groups, pending
                                    entries), renamed over it in the same script
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
                                    ``spec``, ``previous``, ``updated_at/_by``,
                                    ``pin``, ``ramp_from``: the first version of the
                                    current ramp, whose versions the decider combines)
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
``fw:spend:held:{scope}:{id}``  hash  what requests in flight hold of a key's (``k``) or
                                    tenant's (``t``) budget: reservation id →
                                    ``amount deadline_ms`` (settled to the actual cost
                                    when the answer ends; lapses at its deadline), and
                                    ``dear``: the dearest recent answer (decaying)
``fw:spend:day:{date}``     hash    ``k:{key}``, ``t:{tenant}``, ``m:{model}`` → that
                                    UTC day's spend (float), kept 400 days
``fw:ctl:lock:{exp}``       string  held while one replica applies an auto decision
``fw:ctl:seq:{exp}:{ver}``  hash    arm → running minimum of the always-valid p-value
                                    over the decider's looks at version ``ver`` (of the
                                    test over the strata of the ramp it belongs to)
``fw:review:{exp}``         hash    response id → failure awaiting a correction (JSON)
``fw:build:lock:{exp}``     string  held while ``retrain build`` runs for an experiment
``fw:build:missed:{exp}``   string  the feedback-stream id from which a build reads the
                                    archive: its group fell behind the stream's trim;
                                    kept until the build acknowledged what it read
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

The names are a value, :class:`Keyspace`, built once from the config (cluster or not)
where a process starts — the gateway's lifespan, a ``retrain`` or ``gateway`` command —
and handed to everything that touches Redis (``ks.feedback_stream``,
``ks.feedback(response_id)``). Nothing rewrites names at start-up and importing a module
never captures one: a component names keys only through the keyspace it was given.
:data:`PLAIN_KEYSPACE` and :data:`CLUSTER_KEYSPACE` are the two keyspaces;
:func:`for_redis` picks one.
Names that do not depend on the deployment (what grows with traffic, consumer groups)
are module functions: :func:`interaction`, :func:`block`, :func:`retrain_group`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PLAIN_PREFIX = "fw:"
CLUSTER_PREFIX = "{fw}:"  # one hash tag: the shared state lives in one slot
SPREAD = "fw:"  # keys that grow with traffic: never tagged, spread over a cluster
ARCHIVE_GROUP = "archive"  # the archiver's consumer group on both streams
NO_EXPERIMENT = "-"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Every deployment-dependent key name: one Redis (``fw:…``) or a Redis Cluster
    (the shared state hash-tagged ``{fw}:…``, rate-limit buckets tagged by key id)."""

    cluster: bool
    prefix: str
    interaction_stream: str
    feedback_stream: str
    retrieval_stream: str
    aggregate_index: str
    control_version: str
    experiments: str
    models: str
    models_history: str
    api_keys: str
    tenants: str
    auth_audit: str
    jobs: str
    retrain_runs: str
    archive_lock: str
    archive_pause: str
    forget_pending: str

    @classmethod
    def build(cls, cluster: bool) -> Keyspace:
        p = CLUSTER_PREFIX if cluster else PLAIN_PREFIX
        return cls(
            cluster=cluster,
            prefix=p,
            interaction_stream=p + "ix:stream",
            feedback_stream=p + "fb:stream",
            retrieval_stream=p + "fb:retrieval",
            aggregate_index=p + "agg:index",
            control_version=p + "ctl:version",
            experiments=p + "ctl:experiments",
            models=p + "ctl:models",
            models_history=p + "ctl:models:history",
            api_keys=p + "auth:keys",
            tenants=p + "auth:tenants",
            auth_audit=p + "auth:audit",
            jobs=p + "jobs",
            retrain_runs=p + "retrain:runs",
            archive_lock=p + "archive:lock",
            archive_pause=p + "archive:pause",
            forget_pending=p + "forget:pending",
        )

    def rate_limit(self, account: str, bucket: str) -> str:
        """A key's ``req`` or ``tok`` bucket; on a cluster both share the key's own tag."""
        if self.cluster:
            return f"{SPREAD}rl:{{{account}}}:{bucket}"
        return f"{SPREAD}rl:{account}:{bucket}"

    def feedback(self, response_id: str) -> str:
        return f"{self.prefix}fb:{response_id}"

    def aggregate(self, experiment: str | None, arm: str) -> str:
        return f"{self.prefix}agg:{experiment or NO_EXPERIMENT}:{arm}"

    def requests(self, experiment: str | None, arm: str) -> str:
        return f"{self.prefix}req:{experiment or NO_EXPERIMENT}:{arm}"

    def version_requests(self, experiment: str, version: int, arm: str) -> str:
        return f"{self.prefix}vreq:{experiment}:{version}:{arm}"

    def version_users(self, experiment: str, version: int, arm: str) -> str:
        return f"{self.prefix}users:{experiment}:{version}:{arm}"

    def user_scores(self, experiment: str, version: int, arm: str) -> str:
        return f"{self.prefix}uagg:{experiment}:{version}:{arm}"

    def sequential(self, experiment: str, version: int) -> str:
        return f"{self.prefix}ctl:seq:{experiment}:{version}"

    def spend(self, scope: str, account: str, period: str) -> str:
        """Spend of a key (``scope`` ``k``) or tenant (``t``) in one budget period."""
        return f"{self.prefix}spend:{scope}:{account}:{period}"

    def spend_held(self, scope: str, account: str) -> str:
        """What requests in flight hold of a key's (``k``) or tenant's (``t``) budget."""
        return f"{self.prefix}spend:held:{scope}:{account}"

    def spend_day(self, date: str) -> str:
        return f"{self.prefix}spend:day:{date}"

    def history(self, experiment: str) -> str:
        return f"{self.prefix}ctl:history:{experiment}"

    def decision_lock(self, experiment: str) -> str:
        return f"{self.prefix}ctl:lock:{experiment}"

    def review(self, experiment: str) -> str:
        return f"{self.prefix}review:{experiment}"

    def build_lock(self, experiment: str) -> str:
        return f"{self.prefix}build:lock:{experiment}"

    def build_missed(self, experiment: str) -> str:
        return f"{self.prefix}build:missed:{experiment}"

    def run_lock(self, experiment: str) -> str:
        return f"{self.prefix}run:lock:{experiment}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def trained(self, experiment: str) -> str:
        return f"{self.prefix}retrain:trained:{experiment}"


PLAIN_KEYSPACE = Keyspace.build(cluster=False)  # one Redis: the names in the table
CLUSTER_KEYSPACE = Keyspace.build(cluster=True)  # a Redis Cluster: the shared state in one slot


def for_redis(cluster: bool) -> Keyspace:
    """The keyspace of a deployment: ``redis_cluster`` (with a ``redis_url``) or not."""
    return CLUSTER_KEYSPACE if cluster else PLAIN_KEYSPACE


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


def block(content_hash: str) -> str:
    """A message block shared by the interactions that carry it (grows with traffic)."""
    return f"{SPREAD}blk:{content_hash}"


def is_per_version(key: str) -> bool:
    """A per-version counter (``fw:vreq:*``): it expires with the interactions it counts."""
    return key.startswith((f"{PLAIN_PREFIX}vreq:", f"{CLUSTER_PREFIX}vreq:"))


def stream_rewrite(stream: str) -> str:
    """Where a stream is rebuilt before it is renamed over the original (same slot)."""
    return f"{stream}:rewrite"


def retrain_group(experiment: str) -> str:
    """The feedback stream's consumer group that ``retrain build`` uses for an experiment."""
    return f"retrain.{experiment}"


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
