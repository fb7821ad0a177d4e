"""``imgsearch import``: bulk import of existing embeddings (Parquet, .npy with metadata, JSONL)."""

from __future__ import annotations

import argparse
import sys

from imgsearch.cli._common import Subparsers
from imgsearch.settings import Settings


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.catalog import Catalog

    rebuild = {"auto": None, "always": True, "never": False}[args.rebuild_index]
    with Catalog.open(settings=settings) as catalog:
        result = catalog.import_report(
            args.file,
            tenant=args.tenant,
            metadata=args.metadata,
            progress=sys.stderr.isatty(),
            rebuild_index=rebuild,
            maintenance_work_mem=args.maintenance_work_mem,
            parallel_workers=args.parallel_workers,
        )
    shared = f", {result.linked} of them shared with another product" if result.linked else ""
    print(
        f"imported {result.imported} of {result.rows} rows ({result.duplicates} already stored or repeated"
        f"{shared}) in {result.load_seconds:.1f} s"
    )
    if result.index == "rebuilt":
        print(
            f"built the HNSW index in {result.build_seconds or 0:.1f} s "
            f"(maintenance_work_mem {result.maintenance_work_mem}, {result.parallel_workers} parallel workers)"
        )
    if result.set_aside_build_seconds is not None:
        print(f"built the search indexes set aside for the load in {result.set_aside_build_seconds:.1f} s")
    if result.value_indexes:
        print(f"built {result.value_indexes} per-value HNSW indexes (imgsearch index list)")
    return 0


def register(commands: Subparsers) -> None:
    imports = commands.add_parser(
        "import",
        help="bulk import of existing embeddings (Parquet, .npy + metadata, JSONL)",
        description="Import existing embeddings of the active model, as a migration from another "
        "system: a Parquet file (columns embedding, product_id, tenant, and optionally category, "
        "price, currency, attributes, image as a URL), a .npy file of vectors with --metadata (a CSV "
        "or JSONL of the same rows), or JSON Lines with the vector in `embedding`. Every row is "
        "checked first; one bad row exits 2 naming file and row, nothing imported. Rows already "
        "stored are skipped, so an interrupted import can be run again. An import that at least "
        "doubles the index builds it afresh after the load; searches keep working meanwhile.",
    )
    imports.add_argument("file", metavar="FILE", help=".parquet, .npy (with --metadata), .jsonl or .ndjson")
    imports.add_argument("--tenant", help="tenant of the rows that don't name one")
    imports.add_argument("--metadata", metavar="FILE", help="the .npy file's rows: .csv, .jsonl or .ndjson")
    imports.add_argument(
        "--rebuild-index",
        choices=["auto", "always", "never"],
        default="auto",
        help="build the HNSW index after the load: when the import at least doubles it (auto, the default)",
    )
    imports.add_argument(
        "--maintenance-work-mem",
        metavar="SIZE",
        help="memory for the index build (default: sized to the graph)",
    )
    imports.add_argument(
        "--parallel-workers",
        type=int,
        metavar="N",
        help="parallel workers for the build (default: cores - 1)",
    )
    imports.set_defaults(func=_import)
