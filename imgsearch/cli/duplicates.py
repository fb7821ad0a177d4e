"""``imgsearch duplicates``: groups of near-identical images across a tenant's products."""

from __future__ import annotations

import argparse
import csv
import sys

from imgsearch.cli._common import Subparsers
from imgsearch.settings import Settings


def _duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from imgsearch import Catalog
    from imgsearch.ingest import duplicates as near_duplicates
    from imgsearch.quality import duplicates as duplicate_groups

    with Catalog.open(settings=settings) as catalog:
        report = catalog.duplicates(
            args.tenant,
            max_hamming=args.max_hamming,
            max_distance=None
            if args.hash_only
            else (near_duplicates.UNSET if args.max_distance is None else args.max_distance),
            progress=sys.stderr.isatty(),
        )
        if args.html:
            previews = {
                m.image_id: catalog.image_preview(m.image_id, tenant=args.tenant)
                for g in report.groups
                for m in g.members
            }
            Path(args.html).write_text(
                duplicate_groups.html_page(report, args.tenant, previews, catalog.limits)
            )
    out = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(["group", "image_id", "product_id", "hamming", "distance"])
        for number, group in enumerate(report.groups, 1):
            for m in group.members:
                distance = "" if m.distance is None else f"{m.distance:.4f}"
                writer.writerow([number, m.image_id, m.product_id, m.hamming, distance])
    finally:
        if out is not sys.stdout:
            out.close()
    print(duplicate_groups.summary(report), file=sys.stderr)
    if args.html:
        print(f"page of the groups: {args.html}", file=sys.stderr)
    return 0


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from exc


def register(commands: Subparsers) -> None:
    dup = commands.add_parser(
        "duplicates",
        help="list groups of near-identical images across a tenant's products",
        description="Compare every pair of a tenant's images by perceptual hash (at most --max-hamming "
        "of 64 bits apart), confirm each pair by embedding distance (at most --max-distance), and "
        "print the groups of images of different products that copy each other as CSV: group, "
        "image_id, product_id, and hamming and distance to the group's first image. Images uploaded "
        "before hashes existed are hashed first.",
    )
    dup.add_argument("--tenant", required=True, help="whose images to compare")
    dup.add_argument(
        "--max-hamming",
        type=int,
        default=None,
        help="hash bits that may differ (default 10, setting IMGSEARCH_DUPLICATE_MAX_HAMMING)",
    )
    dup.add_argument(
        "--max-distance",
        type=_number,
        default=None,
        help="cosine distance the embeddings may differ "
        "by (default 0.1, setting IMGSEARCH_DUPLICATE_MAX_DISTANCE)",
    )
    dup.add_argument("--hash-only", action="store_true", help="don't confirm by embedding")
    dup.add_argument("--csv", metavar="FILE", default=None, help="write the CSV here instead of stdout")
    dup.add_argument("--html", metavar="FILE", default=None, help="also write a page of the groups' images")
    dup.set_defaults(func=_duplicates)
