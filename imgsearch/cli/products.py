"""``imgsearch update`` (product feeds) and ``imgsearch delete`` (images, products)."""

from __future__ import annotations

import argparse

from imgsearch.cli._common import Subparsers, open_engine
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _update(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.catalog import Catalog
    from imgsearch.ingest import sources

    named = list(sources.feed(args.feeds, tenant=args.tenant))
    if not named:
        print("updated 0 products: the feed has no rows")
        return 0
    names = [name for name, _ in named]
    with Catalog.open(settings=settings) as catalog:
        changed = catalog.update_products([row for _, row in named], names=names)
    print(f"updated {changed} of {len(named)} products ({len(named) - changed} already had these values)")
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.ingest import removal

    if bool(args.image_ids) == bool(args.product):
        raise InvalidInput("give image ids or --product, not both and not neither")
    if args.product and args.tenant is None:
        raise InvalidInput("--product needs --tenant: product ids are per tenant")
    eng = open_engine(settings)
    try:
        if args.product:
            count = removal.delete_product(eng, args.product, tenant=args.tenant)
            print(f"deleted product {args.product!r} of tenant {args.tenant!r} and its {count} images")
        else:
            count = removal.delete_images(eng, args.image_ids, tenant=args.tenant)
            print(f"deleted {count} images")
    finally:
        eng.dispose()
    return 0


def register(commands: Subparsers) -> None:
    update = commands.add_parser(
        "update",
        help="change products' price, category, currency or attributes from a feed",
        description="Apply CSV/JSONL product feeds (columns: product_id, tenant, category, price, "
        "currency, attributes as JSON) without uploading images again. An empty CSV cell keeps its "
        "field; in JSON Lines a missing key keeps it and null clears it. All or nothing: every row "
        "is checked and every product looked up first; a bad row or an unknown product exits "
        "non-zero naming its file and line, with nothing written.",
    )
    update.add_argument("feeds", nargs="+", metavar="FEED", help=".csv, .jsonl or .ndjson files")
    update.add_argument(
        "--tenant", default="default", help="tenant of rows that don't name one (default 'default')"
    )
    update.set_defaults(func=_update)

    remove = commands.add_parser(
        "delete",
        help="delete images, or a product with its images",
        description="Delete images by id, or a product with all its images; their embeddings go "
        "with them. All or nothing: an id that names no image (of --tenant, if given) deletes "
        "nothing and exits 3.",
    )
    remove.add_argument("image_ids", nargs="*", type=int, metavar="IMAGE_ID", help="images to delete")
    remove.add_argument("--product", metavar="PRODUCT_ID", help="delete this product and all its images")
    remove.add_argument("--tenant", default=None, help="only this tenant's images (required with --product)")
    remove.set_defaults(func=_delete)
