"""``retrain forget``: a user's data out of Redis, the archive and every dataset version.

Redis and the archive are the gateway's work (:mod:`gateway.ops.forget`, shared with
``DELETE /admin/users/{user}``); this module adds the dataset versions, which only the
retrain side sees (``retrain.dataset_dir``).

A dataset version is named by its content, and models, jobs and evaluations refer to
it by that name, so a version is never changed in place. For each experiment, holding
its build lock (no build runs meanwhile):

* when the latest version holds examples of the user, a **successor** without them is
  written (named by its content as every version is; ``parent``: the version it
  replaces; ``forgotten``: how many examples left, never whose) and ``latest`` moves to
  it. With nothing left, ``latest`` is removed: the next build starts afresh;
* **every version holding examples of the user is deleted** (renamed to
  ``.forgotten-<id>`` first, then removed, so a crash never leaves half a version that
  looks whole): the data is gone from every copy, not only from the newest.

An example is the user's when its response id is one of the user's interactions, when
one of its rating events is a rating the user gave or a rating of the user's
interactions (the ids :mod:`gateway.ops.forget` found and kept in ``fw:forget:pending``), or
when its group is the user (``user:<id>``) in an experiment of the forgotten user's
tenant (in a shared experiment, the same id may be another tenant's user: ids decide).

The successor is untrained (``fw:retrain:trained``), so the next ``retrain run``
trains a model without the user's data; models trained before keep what they learned
until they are replaced.
"""

from __future__ import annotations

import getpass
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys, paths
from gateway.core.auth import Principal
from gateway.core.documents import CostEstimate, Manifest
from gateway.core.errors import Conflict, InvalidRequest
from gateway.core.locks import Lock
from gateway.ops import forget
from gateway.ops.archive import open_archive

from . import errors
from .config import RetrainSettings
from .curate import Example
from .faults import crash_point
from .versions import dataset_id, experiment_tenant, latest_version, tally, write_version

FORGOTTEN_PREFIX = ".forgotten-"


class Busy(errors.Busy):
    """A build of the experiment holds its lock; ``str()`` names it."""


@dataclass
class Removal:
    """What one user's data is, for the datasets (a ``fw:forget:pending`` entry)."""

    user: str
    tenant: str | None
    response_ids: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Removal:
        return cls(
            doc["user"],
            doc.get("tenant"),
            set(doc.get("response_ids") or []),
            set(doc.get("events") or []),
        )

    def owns(self, row: dict[str, Any], by_group: bool) -> bool:
        return (
            row.get("response_id") in self.response_ids
            or not self.events.isdisjoint(row.get("events") or [])
            or (by_group and row.get("group") == f"user:{self.user}")
        )


def _versions(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").is_file()
    )


def _rows(path: Path) -> Iterable[dict[str, Any]]:
    try:
        with open(path / "examples.jsonl", "rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
    except FileNotFoundError:
        return


def _remove(path: Path) -> None:
    """A version gone: renamed out of sight in one step, then deleted."""
    gone = path.with_name(FORGOTTEN_PREFIX + path.name)
    path.rename(gone)
    shutil.rmtree(gone)


def forget_in_experiment(root: Path, removal: Removal, by_group: bool) -> dict[str, int]:
    """The user out of one experiment's versions (its build lock held by the caller):
    ``examples`` removed from the latest, ``versions_removed``, ``successors`` written."""
    counts = {"examples": 0, "versions_removed": 0, "successors": 0}
    if not root.is_dir():
        return counts
    for leftover in root.iterdir():  # a removal or a build that died midway
        if leftover.is_dir() and leftover.name.startswith((FORGOTTEN_PREFIX, ".ds-")):
            shutil.rmtree(leftover)
    affected = [p for p in _versions(root) if any(removal.owns(r, by_group) for r in _rows(p))]
    if not affected:
        return counts
    latest = latest_version(root)
    keep: str | None = None
    if latest is not None and latest.path in affected:
        remaining = [ex for ex in latest.examples if not removal.owns(ex.to_row(), by_group)]
        counts["examples"] = len(latest.examples) - len(remaining)
        if remaining:
            keep = _successor(root, latest.manifest, remaining, removal, counts["examples"])
            counts["successors"] = 1
            crash_point("forget-after-successor")
        else:
            (root / "latest").unlink()
    for path in affected:
        if path.name != keep:
            _remove(path)
            counts["versions_removed"] += 1
    return counts


def _successor(
    root: Path,
    parent: Manifest,
    examples: list[Example],
    removal: Removal,
    removed: int,
) -> str:
    vid = dataset_id(examples)
    if (root / vid / "manifest.json").is_file():  # the same content exists: it is the latest
        pointer = root / "latest.tmp"
        pointer.write_text(vid + "\n")
        pointer.replace(root / "latest")
        return vid
    counts, tokens, by_source = tally(examples)
    trained = tokens.get("train", 0) + tokens.get("preference", 0)
    costs: list[CostEstimate] = []
    for c in parent.get("cost_estimates") or []:
        epochs = c.get("epochs") or 1
        per_token = c["cost"] / c["tokens"] if c.get("tokens") else 0.0
        costs.append(
            {**c, "tokens": trained * epochs, "cost": round(trained * epochs * per_token, 4)}
        )
    manifest: Manifest = {
        **parent,
        "id": vid,
        "parent": parent["id"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "new_examples": 0,
        "by_source": by_source,
        "tokens": tokens,
        "cost_estimates": costs,
        "feedback_events": [e for e in parent["feedback_events"] if e not in removal.events],
        "forgotten": {"examples_removed": removed, "replaces": parent["id"]},
    }
    write_version(root, vid, examples, manifest)
    return vid


def forget_datasets(
    client: redis.Redis,
    ks: keys.Keyspace,
    settings: RetrainSettings,
    removal: Removal,
    *,
    root: Path | None = None,
    experiments: list[str] | None = None,
    locked: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Remove the user's examples from every version of every experiment under ``root``
    (default: ``retrain.dataset_dir``), each under its build lock (``locked``: those the
    caller holds). Raises :class:`Busy` when a build holds one."""
    base = root or settings.retrain.dataset_dir
    roots = _experiments(base)
    if experiments is not None:  # each one's own root, and its workload and distillation roots
        roots = sorted(set(experiments) | {r for r in roots if r.split("/", 1)[0] in experiments})
    total = {"examples": 0, "versions_removed": 0, "successors": 0}
    for name in roots:
        exp, *below = name.split("/")
        by_group = removal.tenant is None or (
            experiment_tenant(client, ks, settings, exp) == removal.tenant
        )
        lock = None if exp in locked else Lock(client, ks.build_lock(exp))
        if lock is not None and (holder := lock.acquire()) is not None:
            raise Busy(f"a build of '{exp}' is running ({holder}); run it again to finish")
        try:
            root_of = paths.under(base, exp, *below, param="experiment")
            for k, n in forget_in_experiment(root_of, removal, by_group).items():
                total[k] += n
        finally:
            if lock is not None:
                lock.release()
    return total


def _experiments(base: Path) -> list[str]:
    """Dataset roots under the datasets directory, relative to it: an experiment's
    (``<experiment>``: names hold no ``/``), and its workload and distillation roots
    (``<experiment>/workload/<W>``, ``<experiment>/distill/<teacher>[/workload/<W>]``,
    :func:`retrain.dataset.dataset_root`); any other nested root (an older one) is
    skipped."""
    if not base.is_dir():
        return []
    found = set()
    for manifest in base.rglob("manifest.json"):
        version = manifest.parent
        if not version.name.startswith("."):
            parts = version.parent.relative_to(base).parts
            if all(paths.safe_part(p) for p in parts) and _a_root(parts):
                found.add("/".join(parts))
    return sorted(found)


def _a_root(parts: tuple[str, ...]) -> bool:
    rest = parts[1:]
    if rest[:1] == ("distill",) and len(rest) >= 2:
        rest = rest[2:]
    return len(parts) >= 1 and (rest == () or (rest[:1] == ("workload",) and len(rest) == 2))


def forget_user(
    client: redis.Redis, ks: keys.Keyspace, settings: RetrainSettings, user: str, tenant: str | None
) -> dict[str, Any]:
    """``retrain forget --user``: Redis, the archive, then the datasets; audited.

    An empty or invalid user or tenant is a :class:`~retrain.errors.UsageError`; the
    archive lock held elsewhere (or a build's) is :class:`~retrain.errors.Busy`."""
    try:
        return _forget_user(client, ks, settings, user, tenant)
    except InvalidRequest as exc:
        raise errors.UsageError(str(exc)) from exc
    except Conflict as exc:
        again = "" if "run it again" in str(exc) else "; run it again to finish"
        raise errors.Busy(f"{exc}{again}") from exc


def _forget_user(
    client: redis.Redis, ks: keys.Keyspace, settings: RetrainSettings, user: str, tenant: str | None
) -> dict[str, Any]:
    by = f"cli:{getpass.getuser()}"
    tenant = forget.scope(Principal(by, "default", "admin", all_tenants=True), tenant)
    archive = open_archive(settings.data_dir, settings.archive)
    forgetter = forget.Forgetter(
        client,
        ks,
        archive,
        experiments=settings.experiments,
        lock_ttl_s=settings.archive.lock_ttl_s,
    )
    plan, counts = forgetter.run(user, tenant, by)
    removal = Removal(plan.user, plan.tenant, plan.response_ids, plan.events)
    counts["datasets"] = forget_datasets(client, ks, settings, removal)
    forget.done_pending(client, ks, plan.user, plan.tenant)
    forget.audit(client, ks, by, None, plan, counts)
    return {"object": "user.forgotten", "user": user, "tenant": tenant, "removed": counts}


def forget_pending(
    client: redis.Redis, ks: keys.Keyspace, settings: RetrainSettings
) -> list[dict[str, Any]]:
    """``retrain forget --pending``: the datasets of users the admin API forgot."""
    by = f"cli:{getpass.getuser()}"
    out = []
    for doc in forget.pending(client, ks):
        removal = Removal.from_doc(doc)
        counts = {"datasets": forget_datasets(client, ks, settings, removal)}
        forget.done_pending(client, ks, removal.user, removal.tenant)
        plan = forget.Plan(removal.user, removal.tenant)
        forget.audit(client, ks, by, None, plan, counts)
        out.append({"user": removal.user, "tenant": removal.tenant, "removed": counts})
    return out


def apply_pending(
    client: redis.Redis, ks: keys.Keyspace, settings: RetrainSettings, base: Path, experiment: str
) -> int:
    """Before a build (its lock held): users forgotten through the admin API leave this
    experiment's versions (audited, as by ``retrain:build``), so the build carries none
    of their examples forward. The entries stay for ``retrain forget --pending``, which
    covers every experiment."""
    removed = 0
    for doc in forget.pending(client, ks):
        removal = Removal.from_doc(doc)
        counts = forget_datasets(
            client,
            ks,
            settings,
            removal,
            root=base,
            experiments=[experiment],
            locked=frozenset({experiment}),
        )
        if counts["versions_removed"]:
            plan = forget.Plan(removal.user, removal.tenant)
            forget.audit(client, ks, "retrain:build", None, plan, {"datasets": counts})
        removed += counts["versions_removed"]
    return removed
