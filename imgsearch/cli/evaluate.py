"""``imgsearch eval``: retrieval quality on a labelled set (:mod:`imgsearch.quality.evaluation`)."""

from __future__ import annotations

import argparse
import json
import sys

from imgsearch.cli._common import Subparsers, positive
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from imgsearch import Catalog
    from imgsearch.quality import evaluation

    if args.judgments is not None:
        return _from_events(args, settings)
    if args.set is None:
        raise InvalidInput("give a labelled SET, or --judgments events")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()] if args.mode else []
    unknown = [m for m in modes if m not in evaluation.MODES]
    if unknown:
        raise InvalidInput(f"--mode takes {', '.join(evaluation.MODES)} (comma-separated), got {args.mode!r}")
    with Catalog.open(settings=settings) as catalog:
        labelled = evaluation.load_set(args.set, catalog, args.tenant)
        print(f"{len(labelled.queries)} queries, relevance by {labelled.by}, k={args.k}", file=sys.stderr)
        catalogs = [catalog] + ([catalog.with_model(args.compare)] if args.compare else [])
        reports = []
        for one in catalogs:
            ways = ", ".join(["ann", "exact", "filtered", *modes])
            print(f"evaluating {one.model} ({ways}) ...", file=sys.stderr, flush=True)
            reports.append(evaluation.evaluate(one, labelled, k=args.k, depth=args.depth, modes=modes))
    print(evaluation.table(reports))
    if len(reports) > 1:
        print("\n".join(evaluation.compared(reports)))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2))
        print(f"per-query detail: {args.json}", file=sys.stderr)
    if args.html:
        Path(args.html).write_text(evaluation.html_page(reports[0]))
        print(f"worst queries: {args.html}", file=sys.stderr)
    return 0


def _from_events(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import Catalog
    from imgsearch.learning import judgments
    from imgsearch.learning.boosts import Policy

    if args.set is not None:
        raise InvalidInput("--judgments events reads the judgments from the events: give no SET")
    if args.tenant is None:
        raise InvalidInput("--judgments events needs --tenant: judgments are a shop's own")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    quiet = settings.model_copy(update={"record_queries": False})  # these searches aren't shoppers'
    with Catalog.open(settings=quiet) as catalog:
        judged = judgments.from_events(catalog.engine, args.tenant, Policy.from_settings(settings))
        print(f"{len(judged.queries)} judged queries from the events since {judged.since:%Y-%m-%d %H:%M} UTC, "
              f"k={args.k}", file=sys.stderr)  # fmt: skip
        found = judgments.compare(catalog, args.tenant, judged, args.k, variants)
    print(judgments.table(found, args.k))
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(found, indent=2))
    return 0


def register(commands: Subparsers) -> None:
    ev = commands.add_parser(
        "eval",
        help="measure retrieval quality on a labelled set (recall@k, precision@k, mAP, nDCG@k, MRR)",
        description="Run a labelled set's queries three ways (the ANN path, an exact scan, the ANN path "
        "with the set's filters) and print recall@k, precision@k, mAP, nDCG@k and MRR for each, and "
        "the ANN path's recall against the exact scan. SET is a .jsonl or .csv file, or a folder of "
        "one folder per class whose images are in the catalog.",
    )
    ev.add_argument(
        "set", nargs="?", default=None, help="the labelled set: FILE.jsonl, FILE.csv or a folder of class folders"
    )
    ev.add_argument(
        "--judgments",
        choices=["events"],
        default=None,
        help="instead of a SET: graded judgments from the tenant's events since the boosts' last refresh "
        "(clicks and purchases against what their positions predict), and ranking variants compared",
    )
    ev.add_argument(
        "--variants",
        default="plain,boost,adapter,both",
        help="with --judgments: the variants compared (plain, boost, adapter, both; default all)",
    )
    ev.add_argument(
        "--k", type=positive, default=10, help="the cut-off of recall, precision and nDCG (default 10)"
    )
    ev.add_argument(
        "--depth", type=positive, default=100, help="results per query for mAP and MRR (default 100)"
    )
    ev.add_argument(
        "--tenant", default=None, help="search this tenant's images (and read a folder set's there)"
    )
    ev.add_argument(
        "--compare", metavar="MODEL", default=None, help="also score a model backfilled by reembed"
    )
    ev.add_argument(
        "--mode",
        metavar="MODES",
        default=None,
        help="also run text queries in these search modes, comma-separated: semantic,lexical,hybrid "
        "(the words not parsed into filters)",
    )
    ev.add_argument("--json", metavar="FILE", default=None, help="write the per-query detail as JSON")
    ev.add_argument("--html", metavar="FILE", default=None, help="write a page of the worst queries")
    ev.set_defaults(func=_eval)
