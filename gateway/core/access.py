"""One access rule: what a principal may see and do with a resource, on every surface.

The admin API (:mod:`gateway.admin.admin`, :mod:`gateway.admin.apikeys`), the public API
(:mod:`gateway.serving.routes`, :mod:`gateway.control.routing`, :mod:`gateway.serving.feedback`),
the console (:mod:`gateway.console`) and the command line (:mod:`gateway.cli`,
:mod:`gateway.admin.keys_cli`) all ask :func:`allows` (or :func:`check`, which raises the
answer), so they cannot disagree about who sees what.

A principal is a key (:class:`gateway.core.auth.Principal`): its role, its tenant (or
every tenant), and for a client key the experiments and models it may call. A resource is
anything a tenant owns (:class:`Resource`): an experiment, a model, an interaction, a
rating, a review item, a dataset or a training job (those three are their experiment's),
a key, a tenant's policy, an audit entry. Its ``tenant`` is its owner; ``None`` is shared
(every tenant's), :data:`NOBODY` is no tenant's (a dataset or job of an experiment that is
gone, a key of every tenant): only an admin of every tenant sees those.

The rule:

* **see** — an admin sees its tenant's and the shared resources (an admin of every
  tenant sees all); a reviewer sees its tenant's interactions, ratings and review items
  and the experiments they belong to (a reviewer of every tenant, all of them); a client
  key sees its tenant's interactions and ratings and the experiments and models it may
  call. Keys, tenants' policies and the audit log are admins' only.
* **call** — a chat: the experiments and models the key may call
  (:meth:`Principal.may_call`).
* **rate** — rate an answer and read its ratings through the public API: the tenant
  that got the answer only (whatever the role: a rating is that tenant's word).
* **change** — an admin changes what its tenant owns (shared resources only by an admin
  of every tenant); a reviewer works review items it sees; a tenant's policy (its
  budget) is changed by an admin of every tenant only.
* **create** — an admin creates for its tenant (an admin of every tenant, for any tenant
  or shared).
* **forget** a user — an admin, of its tenant's users (:func:`users_scope`).

What a principal may not see is answered exactly like what does not exist (404, the same
message): :func:`check` raises :class:`NotFound` for it, and :class:`PermissionDenied`
only for what the principal sees but may not change.

**Names are one namespace.** An experiment and a model share one namespace across
tenants (an app sends the name as OpenAI's ``model``; metrics, the interaction log, the
archive and dataset folders are keyed by it). Creating a name that is taken is answered
with one conflict (:func:`name_taken`) whoever holds it — the caller's tenant, another
tenant or nobody visible — so the answer tells no more than that the name is taken. A
reference to another tenant's model (an arm, a shadow, a fallback, a control, a promote)
is answered like a reference to an unknown model (:func:`referable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from gateway.core.auth import Principal
from gateway.core.errors import Conflict, NotFound, PermissionDenied

Kind = Literal[
    "experiment",
    "model",
    "interaction",
    "rating",
    "review",
    "dataset",
    "job",
    "key",
    "tenant",
    "audit",
]
Action = Literal["see", "call", "rate", "change", "create"]
KINDS: tuple[Kind, ...] = get_args(Kind)
NOBODY = ""  # the owner of what belongs to no tenant: only an admin of every tenant sees it

# What each role may see, by kind (an admin: every kind).
_SEEN_BY: dict[str, frozenset[str]] = {
    "client": frozenset({"experiment", "model", "interaction", "rating"}),
    "reviewer": frozenset({"experiment", "interaction", "rating", "review"}),
}
_NOUN = {
    "experiment": "experiment named",
    "model": "model named",
    "interaction": "interaction",
    "rating": "rating of",
    "review": "failure awaiting review:",
    "dataset": "dataset of",
    "job": "job",
    "key": "key with id",
    "tenant": "tenant named",
    "audit": "audit entry",
}


@dataclass(frozen=True, slots=True)
class Resource:
    kind: Kind
    name: str
    tenant: str | None  # the owner; None: shared; NOBODY: no tenant's


def _owns(p: Principal, tenant: str | None) -> bool:
    return p.all_tenants or (tenant is not None and tenant != NOBODY and tenant == p.tenant)


def _sees_tenant(p: Principal, tenant: str | None) -> bool:
    """Shared (None) or the principal's own tenant (or every tenant's)."""
    if p.all_tenants:
        return True
    return tenant is None or (tenant != NOBODY and tenant == p.tenant)


def allows(p: Principal, action: Action, res: Resource) -> bool:
    """Whether ``p`` may ``action`` ``res`` (the one rule every surface asks)."""
    if action == "call":
        return calls(p, res.kind, res.name, res.tenant)
    if action == "see":
        if p.role == "admin":
            if res.kind in ("key", "audit", "tenant"):
                return _owns(p, res.tenant)  # no shared keys: those of every tenant are theirs
            return _sees_tenant(p, res.tenant)
        if res.kind not in _SEEN_BY[p.role]:
            return False
        if p.role == "client" and res.kind in ("experiment", "model"):
            return calls(p, res.kind, res.name, res.tenant)  # what it may call, it sees
        if res.kind in ("interaction", "rating", "review") and not p.all_tenants:
            return res.tenant is not None and res.tenant != NOBODY and res.tenant == p.tenant
        return _sees_tenant(p, res.tenant)
    if action == "rate":
        return res.kind in ("interaction", "rating") and res.tenant == p.tenant
    if action == "change":
        if not allows(p, "see", res):
            return False
        if res.kind == "review":
            return p.role in ("admin", "reviewer")
        if res.kind == "tenant":  # a tenant's policy (its budget) is the operator's
            return p.role == "admin" and p.all_tenants
        return p.role == "admin" and _owns(p, res.tenant)
    # create: what it will own
    return p.role == "admin" and (p.all_tenants or res.tenant == p.tenant)


def calls(p: Principal, kind: Kind, name: str, tenant: str | None) -> bool:
    """``allows(p, "call", Resource(kind, name, tenant))`` without making the resource:
    what every chat request asks, on the request path."""
    experiment = kind == "experiment"
    return (
        (experiment or kind == "model")
        and tenant != NOBODY
        and (p.may_call(name, tenant, experiment))
    )


def unknown(res: Resource, param: str | None = "name") -> NotFound:
    """The answer for what does not exist, and for what the principal may not see."""
    return NotFound(f"No {_NOUN[res.kind]} '{res.name:.128}'.", param=param)


def check(p: Principal, action: Action, res: Resource, param: str | None = "name") -> None:
    """Raise the answer when ``p`` may not ``action`` ``res``: 404 as if absent when it
    may not see it, 403 when it sees it but may not change or create it."""
    if allows(p, action, res):
        return
    if action in ("call", "rate") or (action != "create" and not allows(p, "see", res)):
        raise unknown(res, param)
    if action == "create":
        raise PermissionDenied(
            f"A key of tenant '{p.tenant}' creates for that tenant only.", param="tenant"
        )
    if res.tenant is None:
        raise PermissionDenied(
            f"'{res.name:.128}' is shared: only an admin of every tenant changes it."
        )
    raise PermissionDenied(f"This key may not change '{res.name:.128}'.")


def visible(p: Principal, kind: Kind, items: dict[str, str | None]) -> list[str]:
    """The names (of ``items``: name → owner) that ``p`` sees, in their order."""
    return [n for n, t in items.items() if allows(p, "see", Resource(kind, n, t))]


def referable(owner: str | None, model_tenant: str | None) -> bool:
    """Whether an experiment of ``owner`` may name a model of
    ``model_tenant``: a shared model, or one of the same tenant. A shared experiment names
    shared models only (every tenant calls it)."""
    return model_tenant is None or model_tenant == owner


def users_scope(p: Principal, tenant: str | None) -> str | None:
    """Whose users ``p`` may forget (``DELETE /admin/users/{user}``, ``retrain forget``):
    an admin of one tenant that tenant's only (naming another is refused, 403 on
    ``tenant``: the parameter, not a resource, is wrong); an admin of every tenant those
    of ``tenant``, or of every tenant when none is given (None)."""
    if p.role != "admin":
        raise PermissionDenied("Only an admin key forgets users.")
    if p.all_tenants:
        return tenant
    if tenant is not None and tenant != p.tenant:
        raise PermissionDenied(
            f"A key of tenant '{p.tenant}' forgets users of that tenant only.", param="tenant"
        )
    return p.tenant


def name_taken(name: str) -> Conflict:
    """The one answer for a name that is taken, whoever holds it."""
    return Conflict(
        f"The name '{name:.128}' is taken: choose another name for the experiment or model.",
        param="name",
    )


def operator(name: str) -> Principal:
    """The principal of a person at the command line with the gateway's Redis: an admin
    of every tenant (whoever reaches the store is)."""
    return Principal(name, "default", "admin", all_tenants=True)
