"""Showing search results: a text table for terminals and a self-contained HTML page (thumbnails
embedded as data URIs, so the file opens in a browser from anywhere)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine, func, select

from imgsearch.access import tenancy
from imgsearch.db.models import Image
from imgsearch.errors import InvalidInput
from imgsearch.ingest import images
from imgsearch.ingest.images import Limits
from imgsearch.records import Hit

THUMBNAIL_PX = 192


@dataclass
class Section:
    """One query and its hits."""

    title: str
    hits: list[Hit]
    query_thumbnail: str | None = None  # data URI of the query image, for image queries
    details: dict[str, str] = field(default_factory=dict)  # filters and options, shown under the title


def _price(price: Decimal | None) -> str:
    return "-" if price is None else f"{price:.2f}"


def table(hits: Sequence[Hit]) -> str:
    """Hits as an aligned text table, nearest first."""
    with_probability = any(hit.probability is not None for hit in hits)
    header = ["#", "image", "product", "tenant", "category", "price", "distance", "score"]
    if with_probability:
        header.append("prob")
    rows = [header]
    for rank, hit in enumerate(hits, start=1):
        row = [
            str(rank),
            str(hit.image_id),
            hit.product_id,
            hit.tenant,
            hit.category or "-",
            _price(hit.price),
            "-" if hit.distance is None else f"{hit.distance:.4f}",
            "-" if hit.score is None else f"{hit.score:.4f}",
        ]
        if with_probability:
            row.append("-" if hit.probability is None else f"{hit.probability:.3f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {0, 1, 5, 6, 7, 8}
    lines = [
        "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def thumbnail(data: bytes, px: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data URI of the image scaled to fit ``px``; None when the bytes aren't an image."""
    try:
        jpeg = images.thumbnail(data, px, Limits(max_bytes=len(data) + 1, max_pixels=200_000_000))
    except Exception:  # a thumbnail is cosmetic: never fail the page over one
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnails(engine: Engine, image_ids: Iterable[int], tenant: str | None = None) -> dict[int, str]:
    """A thumbnail (data URI) or the image's own http(s) URL for each image id."""
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    with engine.begin() as conn:
        if tenant is not None:
            tenancy.scope(conn, tenant)
        shown = func.coalesce(Image.content, Image.thumbnail).label("content")  # bytes dropped: the thumbnail
        rows = conn.execute(select(Image.id, shown, Image.uri).where(Image.id.in_(ids))).all()
    found: dict[int, str] = {}
    for row in rows:
        source = thumbnail(row.content) if row.content is not None else None
        if source is None and row.uri and row.uri.startswith(("http://", "https://")):
            source = row.uri
        if source is not None:
            found[row.id] = source
    return found


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.details { color: #555; font-size: .9rem; }
.query img { max-width: 160px; border: 2px solid #888; }
.hits { display: flex; flex-wrap: wrap; gap: 1rem; list-style: none; padding: 0; }
.hit { width: 200px; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }
.hit img { width: 192px; height: 192px; object-fit: contain; background: #f6f6f6; }
.hit dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .5rem; font-size: .85rem; margin: .4rem 0 0; }
.hit dt { color: #777; } .hit dd { margin: 0; }
.empty { color: #a00; }
"""


def _hit_item(rank: int, hit: Hit, source: str | None) -> str:
    esc = html.escape
    fields = [
        ("image", str(hit.image_id)),
        ("product", hit.product_id),
        ("tenant", hit.tenant),
        ("category", hit.category or "-"),
        ("price", _price(hit.price)),
        ("score", "-" if hit.score is None else f"{hit.score:.4f}"),
        ("distance", "-" if hit.distance is None else f"{hit.distance:.4f}"),
    ]
    if hit.probability is not None:
        fields.append(("probability", f"{hit.probability:.3f}"))
    picture = (
        f'<img src="{esc(source)}" alt="image {hit.image_id}">'
        if source
        else '<div class="noimg">no preview</div>'
    )
    cells = "".join(
        f'<dt>{esc(name)}</dt><dd class="{esc(name)}">{esc(value)}</dd>' for name, value in fields
    )
    return f'<li class="hit" data-image-id="{hit.image_id}" data-rank="{rank}">{picture}<dl>{cells}</dl></li>'


def html_page(title: str, sections: Sequence[Section], sources: dict[int, str]) -> str:
    """A self-contained results page; ``sources`` maps image ids to thumbnails (see :func:`thumbnails`)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="details">generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by imgsearch</p>',
    ]
    for section in sections:
        parts.append(f'<section class="query"><h2>{esc(section.title)}</h2>')
        if section.details:
            shown = ", ".join(f"{esc(k)}: {esc(v)}" for k, v in section.details.items())
            parts.append(f'<p class="details">{shown}</p>')
        if section.query_thumbnail:
            parts.append(
                f'<p>query image:<br><img src="{esc(section.query_thumbnail)}" alt="query image"></p>'
            )
        if not section.hits:
            parts.append('<p class="empty">no results</p>')
        else:
            items = "".join(
                _hit_item(rank, hit, sources.get(hit.image_id)) for rank, hit in enumerate(section.hits, 1)
            )
            parts.append(f'<ol class="hits">{items}</ol>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def check_writable(path: Path) -> None:
    """Refuse a results page ``path`` that :func:`write_page` could not write (a folder, a missing
    folder, no permission) before the work whose results it would show."""
    if path.is_dir():
        raise InvalidInput(f"cannot write the results page {path}: Is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidInput(f"cannot write the results page {path}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidInput(f"cannot write the results page {path}: Permission denied")


def write_page(path: Path, title: str, sections: Sequence[Section], sources: dict[int, str]) -> None:
    """:func:`html_page` written to ``path``; a path that can't be written is :class:`InvalidInput`."""
    try:
        path.write_text(html_page(title, sections, sources), encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write the results page {path}: {exc.strerror}") from exc
