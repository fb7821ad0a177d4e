"""``imgsearch ingest``: store files, folders and manifests, then embed them in-process."""

from __future__ import annotations

import argparse
import sys

from imgsearch.cli._common import Subparsers, embedders
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch.catalog import Catalog
    from imgsearch.ingest import sources
    from imgsearch.ingest.rows import check_products_agree
    from imgsearch.work import pipeline

    rows = list(sources.collect(args.paths, tenant=args.tenant, category=args.category))
    wheres = [row.pop("_where") for row in rows]
    check_products_agree(rows, wheres)  # two rows giving one product different prices: nothing stored
    added = duplicates = shared = 0
    failures: list[str] = []
    with Catalog.open(settings=settings) as catalog:
        for row, where in tqdm(
            zip(rows, wheres, strict=True),
            desc="storing",
            unit="img",
            total=len(rows),
            disable=not sys.stderr.isatty(),
        ):
            try:
                stored = catalog.add_row(row, on_duplicate=args.on_duplicate)
            except InvalidInput as exc:
                failures.append(f"{where}: {exc}")
                continue
            added += stored[1]
            duplicates += not stored[1] and not stored.shared
            shared += stored.shared
        embedded_line = (
            "embedding: skipped (--no-embed); run `imgsearch worker` or `imgsearch worker --drain`"
        )
        if not args.no_embed:
            totals = pipeline.drain(
                catalog.engine,
                embedders(settings),
                model=catalog.active_model,
                batch_size=settings.batch_size,
                lease_seconds=settings.lease_seconds,
                downloads=settings.downloads(),
                progress=sys.stderr.isatty(),
            )
            embedded_line = f"embedded {totals.ready}, failed {totals.failed}"
            failures += [f"image {image_id}: {error}" for image_id, error in totals.errors.items()]
    print(
        f"added {added}, duplicates skipped {duplicates}"
        + (f", shared with another product {shared}" if shared else "")
    )
    print(embedded_line)
    if failures:
        print(f"failed {len(failures)}:")
        for line in failures[:50]:
            print(f"  {line}")
    return 1 if failures else 0


def register(commands: Subparsers) -> None:
    ingest = commands.add_parser(
        "ingest",
        help="store images from files, folders or manifests, and embed them",
        description="Store images from files, folders (recursively) or CSV/JSONL manifests (columns: "
        "image path or URL, tenant, product_id, category, price, currency, attributes as JSON), then "
        "embed everything pending in this process.",
        epilog="Exit status: 0 every image stored (and embedded, unless --no-embed); 1 some images "
        "failed, each listed with why, the others stored; 2 a usage error or a refused input, nothing "
        "stored; 3 something not found; 75 a transient fault (the database unreachable): run it again, "
        "images already stored are skipped.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument(
        "--tenant", default="default", help="tenant of rows that don't name one (default 'default')"
    )
    ingest.add_argument("--category", default=None, help="category of rows that don't name one")
    ingest.add_argument(
        "--on-duplicate",
        choices=("keep", "link", "reject"),
        default="keep",
        help="a near-copy of another product's image: store it (keep, the default), store it linked to "
        "that image (link), or refuse it as a failure (reject)",
    )
    ingest.add_argument("--no-embed", action="store_true", help="only store; leave embedding to the workers")
    ingest.set_defaults(func=_ingest)
