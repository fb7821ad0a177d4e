"""``imgsearch interleave report``: which ranking variant shoppers' clicks prefer, from searches run
with ``interleave="A,B"`` (:mod:`imgsearch.learning.interleave`)."""

from __future__ import annotations

import argparse
import sys

from imgsearch.cli._common import Subparsers, positive
from imgsearch.settings import Settings


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import Catalog
    from imgsearch.learning import interleave

    with Catalog.open(settings=settings) as catalog:
        found = interleave.report(catalog.engine, args.tenant, args.days)
    if not found:
        print(f"no interleaved search of {args.tenant} drew a click in the last {args.days} days", file=sys.stderr)
    for comparison in found:
        print(comparison.line())
    return 0


def register(commands: Subparsers) -> None:
    group = commands.add_parser(
        "interleave",
        help="which ranking variant shoppers prefer, from interleaved searches",
        description="Searches run with interleave=A,B show both variants' hits drafted in turns; each click "
        "credits its hit's variant, and the variant with more clicks wins that search.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="wins per pair of variants",
        description="For each pair of variants the tenant interleaved: the searches each won (more clicks on "
        "its hits), the ties, the clicks, and a two-sided sign test's p-value.",
    )
    report.add_argument("--tenant", required=True, help="whose searches")
    report.add_argument("--days", type=positive, default=30, help="the searches of the last DAYS (default 30)")
    report.set_defaults(func=_report)
