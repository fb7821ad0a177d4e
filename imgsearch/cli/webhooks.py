"""``imgsearch webhooks``: a tenant's endpoints (add, list, remove, rotate-secret), replays, and
the delivery figures (:mod:`imgsearch.hooks`). A running ``imgsearch worker`` delivers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from imgsearch.cli._common import Subparsers, open_engine
from imgsearch.hooks import EVENT_TYPES
from imgsearch.settings import Settings

if TYPE_CHECKING:
    from imgsearch.hooks.webhooks import Webhooks


@contextmanager
def _webhooks(settings: Settings) -> Iterator[Webhooks]:
    """The catalog's webhooks on a migrated database, its engine disposed of afterwards."""
    from imgsearch.hooks.webhooks import Webhooks

    hooks = Webhooks(open_engine(settings), settings.webhooks())
    try:
        yield hooks
    finally:
        hooks.engine.dispose()


def _add(args: argparse.Namespace, settings: Settings) -> int:
    with _webhooks(settings) as hooks:
        created = hooks.add(args.url, tenant=args.tenant, events=args.events)
    print(f"endpoint {created.id} for {args.tenant}; its secret, shown once (verify deliveries with it):")
    print(created.secret)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with _webhooks(settings) as hooks:
        found = hooks.list(args.tenant)
        stats = hooks.stats()
    if args.json:
        print(json.dumps([endpoint.as_dict() for endpoint in found]))
        return 0
    for e in found:
        state = f"disabled {e.disabled_at:%Y-%m-%d %H:%M}: {e.disabled_reason}" if e.disabled_at else "live"
        print(f"{e.id}\t{e.tenant}\t{e.url}\t{','.join(e.events)}\t{e.pending} pending, "
              f"{e.delivered} delivered, {e.dead} given up\t{state}")  # fmt: skip
    if not found:
        print("no webhook endpoints" + (f" for {args.tenant}" if args.tenant else ""))
    print(f"deliveries: {stats.pending} pending (the oldest {stats.lag_seconds:.1f} s, {stats.failing} failing), "
          f"{stats.delivered} delivered, {stats.dead} given up")  # fmt: skip
    return 0


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    with _webhooks(settings) as hooks:
        hooks.remove(args.id, tenant=args.tenant)
    print(f"endpoint {args.id} removed, with its deliveries still to go")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    with _webhooks(settings) as hooks:
        rotated = hooks.rotate_secret(args.id, tenant=args.tenant)
    print(f"endpoint {rotated.id}: its new secret, shown once (the old one signs too for a day):")
    print(rotated.secret)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    with _webhooks(settings) as hooks:
        queued = hooks.replay(tenant=args.tenant, since=args.since, until=args.until, endpoint_id=args.endpoint)
    print(f"{queued} deliveries queued again (each with its event's own webhook-id)")
    return 0


def register(commands: Subparsers) -> None:
    hooks = commands.add_parser(
        "webhooks",
        help="tell a shop's backend when images are ready or fail: signed webhooks",
        description="Endpoints a tenant's events are posted to, signed as Standard Webhooks says "
        "(webhook-id, webhook-timestamp, webhook-signature). A running `imgsearch worker` delivers.",
    )
    sub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="add an endpoint; prints its id and its secret, once")
    add.add_argument("url", help="an http(s) URL at a public address (or in IMGSEARCH_WEBHOOK_ALLOW)")
    add.add_argument("--tenant", required=True)
    add.add_argument("--events", help=f"comma-separated types (default: all of {', '.join(EVENT_TYPES)})")
    add.set_defaults(func=_add)
    listing = sub.add_parser("list", help="the endpoints and their deliveries (never their secrets)")
    listing.add_argument("--tenant", help="one tenant's (default: every tenant's)")
    listing.add_argument("--json", action="store_true", help="as JSON")
    listing.set_defaults(func=_list)
    remove = sub.add_parser("remove", help="remove an endpoint and its deliveries still to go")
    remove.add_argument("id", type=int)
    remove.add_argument("--tenant", required=True)
    remove.set_defaults(func=_remove)
    rotate = sub.add_parser("rotate-secret", help="a new secret (the old one signs too for a day); enables a disabled endpoint")
    rotate.add_argument("id", type=int)
    rotate.add_argument("--tenant", required=True)
    rotate.set_defaults(func=_rotate)
    replay = sub.add_parser("replay", help="send a time range of events again")
    replay.add_argument("--tenant", required=True)
    replay.add_argument("--since", required=True, help="ISO 8601, e.g. 2026-11-27T09:00:00Z")
    replay.add_argument("--until", help="ISO 8601 (default: now)")
    replay.add_argument("--endpoint", type=int, help="to this endpoint alone")
    replay.set_defaults(func=_replay)
