"""``imgsearch index``: per-value HNSW indexes for large categories and tenants."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from imgsearch.cli._common import Subparsers, positive
from imgsearch.settings import Settings

if TYPE_CHECKING:
    from imgsearch.catalog import Catalog


def _index(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.catalog import Catalog
    from imgsearch.db.filter_indexes import MIN_RECALL, RETRY_GROWTH

    progress = sys.stderr.isatty()
    with Catalog.open(settings=settings) as catalog:
        if args.index_command in ("categories", "tenants"):
            column = {"categories": "category", "tenants": "tenant"}[args.index_command]
            result = catalog.index_filter_values(
                column, None if args.off else args.min_rows, progress=progress
            )
        elif args.index_command == "refresh":
            result = catalog.refresh_filter_indexes(progress=progress)
        else:
            print(_codes_line(catalog))
            graphs = catalog.filter_graphs()
            if not graphs:
                print("no per-value indexes (imgsearch index categories --min-rows N makes them)")
                return 0
            width = max(len(g.value) for g in graphs)
            print(f"{'column':<8}  {'value':<{width}}  {'rows':>10}  {'size':>9}  {'recall':>6}  state")
            for g in graphs:
                if g.refused:
                    state = (
                        f"refused: recall below {MIN_RECALL} at its build, index dropped (searches "
                        f"scan this value exactly; tried again at {g.rows * RETRY_GROWTH} rows)"
                    )
                elif not g.valid:
                    state = "invalid: run imgsearch index refresh"
                else:
                    state = "used"
                print(
                    f"{g.column:<8}  {g.value:<{width}}  {g.rows:>10}  {g.size_bytes / 1024**2:>7.1f}MB  "
                    f"{g.recall:>6.3f}  {state}"
                )
            return 0
        print(
            f"{len(result.built)} indexes built, {len(result.dropped)} dropped, {result.kept} kept, "
            f"{len(result.refused)} refused (recall below {MIN_RECALL}) in {result.seconds:.1f} s"
        )
        if result.codes_recall is not None:  # checked again by this refresh
            print(_codes_line(catalog))
    return 0


def _codes_line(catalog: Catalog) -> str:
    """The active model's binary codes at their last check, in one line."""
    from imgsearch.db import binary_codes

    with catalog.engine.connect() as conn:
        return binary_codes.describe(binary_codes.last_check(conn, catalog.active_model.id))


def register(commands: Subparsers) -> None:
    index = commands.add_parser(
        "index",
        help="HNSW indexes of their own for large categories and tenants",
        description="Give each category (or tenant) with at least --min-rows rows an HNSW index of "
        "its own, so a search filtered to it can be an unfiltered search of its rows. Each index's "
        "recall is checked at its build against an exact search; searches use it from 0.98 up. "
        "Built CONCURRENTLY (searches and uploads go on). The rule is kept: "
        "imports and the workers' sweep build indexes for values that grow past it, and drop "
        "those that shrink below half of it. A refresh also checks the model's binary codes (which far "
        "filters read) when they are new or its rows have doubled or halved; list shows that check.",
    )
    sub = index.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    for name, what in (("categories", "category"), ("tenants", "tenant")):
        rule = sub.add_parser(name, help=f"an index for each {what} with at least --min-rows rows")
        choice = rule.add_mutually_exclusive_group(required=True)
        choice.add_argument(
            "--min-rows", type=positive, metavar="N", help=f"rows a {what} needs for its own index"
        )
        choice.add_argument("--off", action="store_true", help=f"drop the {name}' indexes and the rule")
    sub.add_parser("refresh", help="build and drop indexes as the rules and the rows say now")
    sub.add_parser("list", help="the per-value indexes, their rows and size")
    index.set_defaults(func=_index)
