"""``imgsearch search``: one hybrid query, printed as a table or JSON lines, or written as a page."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from imgsearch.cli._common import Subparsers
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _read_vector(path: str) -> list[float]:
    """A query vector from a .npy file, a JSON array, or numbers separated by commas or spaces."""
    import json

    import numpy as np

    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as handle:
                content = handle.read().strip()
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read vector file {path}: {exc}") from exc
    if path.endswith(".npy"):
        if array.ndim != 1:
            raise InvalidInput(
                f"vector file {path} holds an array of shape {array.shape}; expected one vector"
            )
        return [float(v) for v in array]
    try:
        values = json.loads(content) if content.startswith("[") else content.replace(",", " ").split()
        return [float(v) for v in values]
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"vector file {path} must hold numbers (JSON array, CSV or .npy): {exc}") from exc


def _attributes(value: str | None) -> dict[str, Any] | None:
    import json

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f'--attributes must be a JSON object, e.g. \'{{"color": "red"}}\': {exc}') from exc
    if not isinstance(parsed, dict):
        raise InvalidInput('--attributes must be a JSON object, e.g. \'{"color": "red"}\'')
    return parsed


def _search(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from pathlib import Path

    from imgsearch.catalog import Catalog
    from imgsearch.ingest.images import Limits, read_source
    from imgsearch.quality import report

    if args.html:
        report.check_writable(Path(args.html))  # before the search, not after it
    query: dict[str, Any] = {}
    if args.text is not None:
        query["text"] = args.text
    elif args.image is not None:
        if not os.path.isfile(args.image):
            raise InvalidInput(f"no such image file: {args.image}")
        # read once (within the byte limit): searched, and shown on the --html page
        query["image"] = read_source(args.image, Limits(settings.max_image_bytes, settings.max_image_pixels))
    elif args.similar_to is not None:
        query["similar_to"] = args.similar_to
    elif args.similar_to_product is not None:
        query["similar_to_product"] = args.similar_to_product
    else:
        query["vector"] = _read_vector(args.vector_file)
    filters = {
        "tenant": args.tenant,
        "category": args.category[0] if args.category and len(args.category) == 1 else args.category,
        "price_min": args.price_min,
        "price_max": args.price_max,
        "attributes": _attributes(args.attributes),
        "brand": args.brand,
    }
    options = {
        "k": args.k,
        "offset": args.offset,
        "group_by_product": args.group_by_product,
        "diversity": args.diversity,
        "expand": args.expand,
        "min_score": args.min_score,
        "min_probability": args.min_probability,
        "consistent": args.consistent,
        "mode": args.mode,
        "parse": not args.no_parse,
    }
    if args.box is not None:
        if args.image is None:
            raise InvalidInput("--box applies to --image queries only")
        try:
            options["box"] = [float(part) for part in args.box.split(",")]
        except ValueError as exc:
            raise InvalidInput(f"--box must be X0,Y0,X1,Y1 in pixels, got {args.box!r}") from exc
    with Catalog.open(settings=settings) as catalog:
        hits = catalog.search(**query, **filters, **options)
        understood = hits.understood
        if understood is not None and understood.filters:
            read = {
                key: value for key, value in understood.as_json().items() if key not in ("text", "fallback")
            }
            note = " (they matched nothing: searched as typed)" if understood.fallback else ""
            print(f"understood: {json.dumps(read, default=str)}{note}", file=sys.stderr)
        if args.json:
            for hit in hits:
                row = {**hit.__dict__, "price": None if hit.price is None else str(hit.price)}
                print(json.dumps(row))
        else:
            print(report.table(hits) if hits else "no results")
        if args.html:
            kind, value = next(iter(query.items()))
            shown = {"vector": args.vector_file, "image": args.image}.get(kind, value)
            details = {name: str(v) for name, v in {**filters, **options}.items() if v not in (None, False)}
            details["model"] = catalog.model
            thumb = report.thumbnail(query["image"]) if "image" in query else None
            section = report.Section(f"{kind.replace('_', ' ')}: {shown}", hits, thumb, details)
            pictures = report.thumbnails(catalog.engine, [h.image_id for h in hits], args.tenant)
            report.write_page(Path(args.html), "imgsearch results", [section], pictures)
            print(f"wrote {args.html}", file=sys.stderr)
    return 0


def register(commands: Subparsers) -> None:
    search = commands.add_parser(
        "search",
        help="search the catalog and print (or write as HTML) the results",
        description="Hybrid search: one query (text, image file, image id or vector file) with any "
        "filters; prints a table, or JSON lines with --json; --html writes a results page. "
        "Exit 3 when --similar-to names no embedded image, or --similar-to-product no product "
        "of --tenant with one.",
    )
    kinds = search.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--text", help="text to image: describe what you look for")
    kinds.add_argument("--image", metavar="FILE", help="image to image: a picture file")
    kinds.add_argument("--similar-to", type=int, metavar="IMAGE_ID", help="more like this stored image")
    kinds.add_argument(
        "--similar-to-product",
        metavar="PRODUCT_ID",
        help="more like this product of --tenant (its images averaged; none of them in the results)",
    )
    kinds.add_argument("--vector-file", metavar="FILE", help="a query vector (.npy, JSON array or CSV)")
    search.add_argument("--tenant", help="only this tenant's images")
    search.add_argument("--category", action="append", help="category (repeat for any of several)")
    search.add_argument("--price-min", help="lowest price")
    search.add_argument("--price-max", help="highest price")
    search.add_argument(
        "--attributes", metavar="JSON", help='attributes to contain, e.g. \'{"color": "red"}\''
    )
    search.add_argument("-k", "--k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--offset", type=int, default=0, help="skip this many results first")
    search.add_argument("--group-by-product", action="store_true", help="best image per product only")
    search.add_argument("--diversity", type=float, help="MMR trade-off, 0..1 (1 = relevance only)")
    search.add_argument("--expand", type=int, metavar="M", help="query expansion with the top M results")
    search.add_argument("--min-score", type=float, help="drop hits below this cosine similarity")
    search.add_argument(
        "--min-probability", type=float, help="text queries: drop hits below this probability"
    )
    search.add_argument(
        "--box", metavar="X0,Y0,X1,Y1", help="with --image: search with this region of it (pixels)"
    )
    search.add_argument(
        "--consistent",
        action="store_true",
        help="with IMGSEARCH_REPLICA_URLS: see every write acknowledged before the search",
    )
    search.add_argument("--brand", help="only this brand's products")
    search.add_argument(
        "--mode",
        choices=("hybrid", "semantic", "lexical"),
        help="text queries: the model, the products' words, or both (default: hybrid when products have text)",
    )
    search.add_argument(
        "--no-parse",
        action="store_true",
        help='text queries: don\'t read filters from the words ("under $50")',
    )
    search.add_argument("--json", action="store_true", help="print one JSON object per hit")
    search.add_argument("--html", metavar="FILE", help="also write a results page with thumbnails")
    search.set_defaults(func=_search)
