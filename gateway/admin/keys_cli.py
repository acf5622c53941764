"""``gateway keys``: runtime API keys from the command line, in the gateway's Redis.

::

    gateway keys create NAME [--tenant T] [--role client|reviewer|admin] [--rpm N]
                             [--tpm N] [--budget LIMIT [--period daily|monthly|SECONDS]]
                             [--experiments A,B] [--models A,B] [--expires-in SECONDS]
    gateway keys list
    gateway keys revoke KEY_ID
    gateway keys rotate KEY_ID
    gateway keys audit

Each takes ``--config FILE`` (the gateway's: it names the Redis) and ``--json``. The
changes are the admin API's (:mod:`gateway.control.apikeys`), audited as by ``cli:$USER``,
and every running replica follows them within a second. ``create`` and ``rotate``
print the secret once; it cannot be read again.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from typing import Any

import orjson

from gateway.core import access
from gateway.core.config import Settings


def add_parser(sub: Any, config_help: str) -> None:
    p = sub.add_parser("keys", help="create, list, revoke or rotate runtime API keys")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; its secret is printed once")
    create.add_argument("name", help="who the key belongs to")
    create.add_argument("--tenant", default=None, help="default: the name (admin: every tenant)")
    create.add_argument("--role", choices=["client", "reviewer", "admin"], default="client")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--budget", type=float, default=None, help="spend limit per period")
    create.add_argument("--period", default="monthly", help="daily, monthly or seconds")
    create.add_argument("--soft", type=float, default=0.8, help="share that fires the alert")
    create.add_argument("--experiments", default=None, help="comma-separated: only these")
    create.add_argument("--models", default=None, help="comma-separated: only these")
    create.add_argument("--expires-in", type=float, default=None, help="seconds from now")
    for name, text in (
        ("revoke", "revoke a key (at once, everywhere)"),
        ("rotate", "a new secret for a key; the old one stops"),
    ):
        one = actions.add_parser(name, help=text)
        one.add_argument("key_id", help="the key's id (key_...)")
    actions.add_parser("list", help="every runtime key (never a secret)")
    actions.add_parser("audit", help="who changed which key or tenant, when")
    for action in actions.choices.values():
        action.add_argument("--config", default=None, help=config_help)
        action.add_argument("--json", action="store_true", help="print JSON")


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    for field in ("tenant", "rpm", "tpm"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.budget is not None:
        period: str | int = int(args.period) if args.period.isdigit() else args.period
        body["budget"] = {"limit": args.budget, "period": period, "soft": args.soft}
    for field in ("experiments", "models"):
        if getattr(args, field) is not None:
            body[field] = [x for x in getattr(args, field).split(",") if x]
    if args.expires_in is not None:
        body["expires_at"] = time.time() + args.expires_in
    return body


async def run_action(settings: Settings, args: argparse.Namespace) -> Any:
    from gateway.control.apikeys import ApiKeys
    from gateway.control.live import LiveState
    from gateway.core import store

    by = access.operator(f"cli:{getpass.getuser()}")  # the rule decides what it manages
    redis, embedded = await store.open_store(settings)
    try:
        ks = store.keyspace(settings)
        apikeys = ApiKeys(redis, ks, LiveState(redis, ks, settings))
        if args.action == "create":
            return await apikeys.create(create_body(args), by)
        if args.action == "list":
            return await apikeys.all(by)
        if args.action == "revoke":
            return await apikeys.revoke(args.key_id, by)
        if args.action == "rotate":
            return await apikeys.rotate(args.key_id, by)
        return await apikeys.audit(by)
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def show(action: str, doc: Any) -> str:
    if action in ("create", "rotate"):
        return (
            f"{doc['id']}  {doc['name']}  tenant {doc['tenant'] or '*'}  role {doc['role']}\n"
            f"key: {doc['key']}\n(shown once: store it now; Redis keeps only its digest)"
        )
    if action == "revoke":
        return f"{doc['id']}  {doc['name']}: revoked"
    if action == "list":
        return (
            "\n".join(
                f"{d['id']}  {d['name']:<20} tenant {d['tenant'] or '*':<12} {d['role']:<8} "
                f"{d['hint']}  {'revoked' if d.get('revoked_at') else 'active'}"
                for d in doc
            )
            or "no runtime keys"
        )
    return (
        "\n".join(
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['at']))}  {e['by']:<16} "
            f"{e['action']:<14} {e['target']}"
            for e in doc
        )
        or "no changes"
    )


def main(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.core.errors import GatewayError

    try:
        doc = asyncio.run(run_action(settings, args))
    except GatewayError as exc:
        print(f"gateway keys {args.action}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(show(args.action, doc))
    return 0
