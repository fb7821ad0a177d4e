"""What storing the original image bytes costs, against keeping a thumbnail only, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/content.py --images 5000

``--images`` product photos of about ``--kb`` KB each (JPEGs of photo-like noise, each made unique)
go into imgsearch's ``images`` table of one database with their bytes (``IMGSEARCH_KEEP_CONTENT``
true, the default), and into another as the 256 px thumbnails a worker keeps instead (false). For
each: the table's size on disk (heap and TOAST), a ``VACUUM`` of it after 10% of its images were
deleted, and a ``pg_dump -Fc`` of the database (time and size). The figures scale linearly with the
number of images (each row's bytes are stored, vacuumed and dumped once), so the table also gives
them for 1M images.

The figure it produces: docs/benchmarks.md, "Image bytes: keep or drop".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _data import fresh_database

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.ingest import images
from imgsearch.settings import Settings
from imgsearch.work.pipeline import THUMBNAIL_LIMITS, THUMBNAIL_PX

SCALE_TO = 1_000_000


def photos(kb: int, count: int = 20) -> list[bytes]:
    """``count`` distinct JPEGs of about ``kb`` KB: smooth gradients with grain, like a product photo."""
    rng = np.random.default_rng(4)
    out = []
    side = 400
    while len(out) < count:
        y, x = np.mgrid[0:side, 0:side]
        base = np.stack([x * 255 / side, y * 255 / side, np.full_like(x, rng.integers(0, 255))], axis=-1)
        pixels = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=88)
        data = buffer.getvalue()
        if len(data) < kb * 1024 * 0.9:
            side = int(side * 1.1)
            continue
        out.append(data)
    return out


def fresh(home: Path, name: str) -> str:
    database = fresh_database(home, name)
    with Catalog.open(database, settings=Settings()):
        pass  # the schema
    return database


def load(database: str, rows: int, sources: list[bytes], keep: bool) -> None:
    url = make_url(database)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        with conn.cursor().copy("COPY imgsearch.products (id, tenant, product_id) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i + 1, "acme", f"p{i}"))
        thumbs = [images.thumbnail(s, THUMBNAIL_PX, THUMBNAIL_LIMITS) for s in sources]
        with conn.cursor().copy(
            "COPY imgsearch.images (id, product_pk, tenant, sha256, content, thumbnail, state, byte_size) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "text", "bytea", "bytea", "bytea", "text", "int8"])
            for i in range(rows):
                # a unique tail makes each row's bytes its own (JPEG readers ignore what follows the end)
                data = sources[i % len(sources)] + i.to_bytes(8, "little")
                thumb = thumbs[i % len(thumbs)] + i.to_bytes(8, "little")
                digest = hashlib.sha256(data).digest()
                copy.write_row(
                    (i + 1, i + 1, "acme", digest, data if keep else None, thumb, "ready", len(data))
                )
                if (i + 1) % 1000 == 0:
                    print(f"  {i + 1} rows", flush=True)
        conn.commit()


def measure(database: str, rows: int) -> dict[str, float]:
    url = make_url(database)
    with psycopg.connect(
        host=url.query["host"], user="postgres", dbname=url.database, autocommit=True
    ) as conn:
        conn.execute("CHECKPOINT")
        size = conn.execute("SELECT pg_total_relation_size('imgsearch.images')").fetchone()
        conn.execute("VACUUM imgsearch.images")  # the load's own first vacuum (hint bits, visibility map)
        # 10% of the images are deleted, as a season's products are: their bytes are dead rows of
        # the TOAST table that VACUUM reads and frees (an update of other columns keeps the bytes)
        conn.execute("DELETE FROM imgsearch.images WHERE id % 10 = 0")
        start = time.perf_counter()
        conn.execute("VACUUM imgsearch.images")
        vacuum = time.perf_counter() - start
    dump_bin = Path(embedded._ep().__file__).parent / "pginstall" / "bin" / "pg_dump"
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        target = Path(folder) / "dump"
        start = time.perf_counter()
        subprocess.run(
            [
                str(dump_bin),
                "-Fc",
                "-h",
                url.query["host"],
                "-U",
                "postgres",
                "-f",
                str(target),
                url.database,
            ],
            check=True,
        )
        dump = time.perf_counter() - start
        dump_size = target.stat().st_size
    assert size is not None
    return {"table": float(size[0]), "vacuum": vacuum, "dump": dump, "dump_size": float(dump_size)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--kb", type=int, default=150, help="size of a product photo (default 150 KB)")
    args = parser.parse_args()
    settings = Settings()
    sources = photos(args.kb)
    mean_kb = sum(map(len, sources)) / len(sources) / 1024
    thumb_kb = np.mean([len(images.thumbnail(s, THUMBNAIL_PX, THUMBNAIL_LIMITS)) for s in sources]) / 1024
    print(f"photos: {mean_kb:.0f} KB on average; thumbnails: {thumb_kb:.1f} KB", flush=True)
    results = {}
    for keep in (True, False):
        name = "bench_content_keep" if keep else "bench_content_thumbs"
        database = fresh(settings.home, name)
        print(f"loading {args.images} images, keep_content={keep} ...", flush=True)
        load(database, args.images, sources, keep)
        results[keep] = measure(database, args.images)
        url = make_url(embedded.ensure_started(settings.home))
        with psycopg.connect(
            host=url.query["host"], user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(f"DROP DATABASE {name} WITH (FORCE)")
    scale = SCALE_TO / args.images
    mib, gib = 1024**2, 1024**3
    keep, thumbs = results[True], results[False]
    print(
        f"\n{args.images:,} images of {mean_kb:.0f} KB (thumbnails {thumb_kb:.1f} KB); 1M = x{scale:,.0f}\n"
    )
    print("| | bytes kept (default) | thumbnail only | ratio | at 1M images, kept / thumbnail |")
    print("|---|---|---|---|---|")
    print(
        f"| images table (heap + TOAST) | {keep['table'] / mib:,.0f} MiB | {thumbs['table'] / mib:,.0f} MiB | "
        f"{keep['table'] / thumbs['table']:.1f}x | {keep['table'] * scale / gib:,.0f} GiB / {thumbs['table'] * scale / gib:,.1f} GiB |"
    )
    print(
        f"| VACUUM after 10% of images deleted | {keep['vacuum']:.3f} s | {thumbs['vacuum']:.3f} s | "
        f"{keep['vacuum'] / thumbs['vacuum']:.1f}x | {keep['vacuum'] * scale / 60:,.1f} min / {thumbs['vacuum'] * scale / 60:,.1f} min |"
    )
    print(
        f"| pg_dump -Fc | {keep['dump']:.1f} s, {keep['dump_size'] / mib:,.0f} MiB | {thumbs['dump']:.1f} s, "
        f"{thumbs['dump_size'] / mib:,.0f} MiB | {keep['dump'] / thumbs['dump']:.1f}x | "
        f"{keep['dump'] * scale / 3600:,.1f} h, {keep['dump_size'] * scale / gib:,.0f} GiB / "
        f"{thumbs['dump'] * scale / 60:,.1f} min, {thumbs['dump_size'] * scale / gib:,.1f} GiB |"
    )


if __name__ == "__main__":
    main()
