"""``imgsearch boosts refresh``: learn the boosts from shoppers' feedback now (Celery beat does it
every ``IMGSEARCH_BOOST_REFRESH_SECONDS``)."""

from __future__ import annotations

import argparse
import sys
import time

from imgsearch.cli._common import Subparsers
from imgsearch.settings import Settings


def _refresh(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import Catalog
    from imgsearch.ingest import checks

    tenant = None if args.tenant is None else checks.identifier(args.tenant, "tenant")
    started = time.perf_counter()
    print("learning boosts from the feedback of the last "
          f"{settings.boost_window_days} days ...", file=sys.stderr)  # fmt: skip
    with Catalog.open(settings=settings) as catalog:
        done = catalog.refresh_boosts(tenant=tenant)
    print(
        f"{done.query_boosts} query boosts and {done.product_boosts} product boosts for {done.tenants} "
        f"tenant(s) in {time.perf_counter() - started:.1f} s; log partitions: {done.partitions_created} "
        f"created, {done.partitions_dropped} past the retention dropped",
    )
    return 0


def register(commands: Subparsers) -> None:
    boosts = commands.add_parser(
        "boosts",
        help="learn ranking boosts from shoppers' clicks and purchases",
        description="Boosts lift, in later searches, the products shoppers click and buy more than "
        "their positions predict (clicks over expected clicks, smoothed, with a minimum of evidence).",
    )
    actions = boosts.add_subparsers(dest="action", required=True, metavar="ACTION")
    refresh = actions.add_parser(
        "refresh",
        help="compute every boost again now",
        description="Compute the boosts from the feedback of the last IMGSEARCH_BOOST_WINDOW_DAYS days "
        "(every tenant's, or --tenant's), replacing the old ones in one transaction; also prepare "
        "the feedback logs' coming partitions and drop those past IMGSEARCH_EVENT_RETENTION_DAYS.",
    )
    refresh.add_argument("--tenant", default=None, help="only this tenant's boosts")
    refresh.set_defaults(func=_refresh)
