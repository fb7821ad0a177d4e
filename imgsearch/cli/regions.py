"""``imgsearch regions``: where images' regions come from, and their backfill."""

from __future__ import annotations

import argparse
import sys

from imgsearch.cli._common import Subparsers, positive
from imgsearch.settings import Settings


def _regions(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.catalog import Catalog
    from imgsearch.work.region_rules import CATALOG
    from imgsearch.work.regions import Backfilled

    with Catalog.open(settings=settings) as catalog:
        regions = catalog.regions
        if args.regions_command == "set":
            labels = [name.strip() for name in (args.labels or "").split(",") if name.strip()]
            rule = regions.set(
                grid=args.grid, detector=args.detector, off=args.off, category=args.category, labels=labels,
                min_score=args.min_score, min_area=args.min_area, max_regions=args.max_regions,
            )  # fmt: skip
            where = f"category {args.category!r}" if args.category else "the catalog"
            print(f"regions of {where}: {rule.describe()}")
            if rule.on:
                print("images stored already get them from: imgsearch regions backfill")
            return 0
        if args.regions_command == "backfill":
            shown = sys.stderr.isatty()

            def progress(done: Backfilled) -> None:
                if shown:
                    print(f"\r{done.images} images, {done.rows} region rows", end="", file=sys.stderr)

            done = regions.backfill(batch_size=args.batch_size, on_batch=progress)
            if shown:
                print(file=sys.stderr)
            print(f"{done.images} images given {done.rows} region rows ({done.skipped} without readable bytes)")
            return 0
        rules = regions.rules()
        if not rules:
            print("regions: off (imgsearch regions set --grid N | --detector CHECKPOINT turns them on)")
        for category, rule in sorted(rules.items()):
            print(f"{'catalog' if category == CATALOG else 'category ' + repr(category)}: {rule.describe()}")
        counts = regions.counts()
        print(f"{counts['images']} images have {counts['rows']} region rows under {catalog.model}")
    return 0


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return number


def register(commands: Subparsers) -> None:
    regions = commands.add_parser(
        "regions",
        help="search the objects inside images: regions beside the whole image",
        description="Give images region rows beside their whole-image row: a grid's cells, or the "
        "objects a transformers detector finds. A search then ranks an image by the closer of its "
        "whole row and its best region, and each hit names the region that matched. Workers embed "
        "new images' regions with the image; `regions backfill` gives them to images stored already.",
    )
    sub = regions.add_subparsers(dest="regions_command", required=True, metavar="COMMAND")
    rule = sub.add_parser("set", help="where regions come from, for the catalog or one category")
    source = rule.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--grid", type=positive, metavar="N",
        help="at each scale s from 2 to N the s x s cells and the (s-1) x (s-1) shifted by half a cell "
        "(--grid 3: 18 regions)",
    )  # fmt: skip
    source.add_argument("--detector", metavar="CHECKPOINT", help="a transformers object-detection checkpoint")
    source.add_argument("--off", action="store_true", help="no regions (their rows are deleted)")
    rule.add_argument("--category", help="this category's images only (default: the catalog's rule)")
    rule.add_argument("--labels", metavar="A,B", help="the names an open-vocabulary detector (OWLv2) looks for")
    rule.add_argument("--min-score", type=_fraction, default=0.3, help="a detector's least score (0.3)")
    rule.add_argument("--min-area", type=_fraction, default=0.02, help="a region's least share of the image (0.02)")
    rule.add_argument("--max-regions", type=positive, metavar="N", help="the most regions an image gets")
    fill = sub.add_parser("backfill", help="give the stored images the regions their rule asks for")
    fill.add_argument("--batch-size", type=positive, default=32, metavar="N", help="images per transaction (32)")
    sub.add_parser("show", help="the rules, and how many images have regions")
    regions.set_defaults(func=_regions)
