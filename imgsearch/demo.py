"""What ``make demo`` runs: ingest the bundled sample catalog (36 product pictures with prices,
categories and colours), embed it with ``IMGSEARCH_MODEL``, run a text query, an image query and a
filtered query, print them as tables and write them to an HTML page.

Without ``IMGSEARCH_DATABASE_URL`` it uses its own database, ``imgsearch_demo``, on the embedded
server, so it never mixes with a real catalog and can be reset when the model changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgsearch.catalog import Catalog
from imgsearch.db import embedded
from imgsearch.embed.model import Embedder
from imgsearch.embed.registry import canonical_name
from imgsearch.errors import ConfigurationError, InvalidInput
from imgsearch.ingest import sources
from imgsearch.quality import report
from imgsearch.records import Hit
from imgsearch.settings import Settings
from imgsearch.work import pipeline

SAMPLES = Path(__file__).parent / "samples"
DATABASE = "imgsearch_demo"
TENANT = "demo"
K = 5


def _open(settings: Settings, model: str, embedder: Embedder) -> Catalog:
    """The demo catalog with ``model`` active; the embedded demo database is recreated when it was
    made with another model."""
    if settings.database_url:
        return Catalog.open(model=model, settings=settings, embedder=embedder)
    url = embedded.ensure_started(settings.home, DATABASE)
    try:
        return Catalog.open(url, model=model, settings=settings, embedder=embedder)
    except ConfigurationError:  # the model was loaded already: this is the other model's catalog
        print(f"the demo database was built with another model; starting it afresh for {model}")
        url = embedded.recreate_database(settings.home, DATABASE)
        return Catalog.open(url, model=model, settings=settings, embedder=embedder)


def _load(settings: Settings, model: str) -> Embedder:
    embedder = Embedder.from_settings(settings, name=model)
    embedder.load()  # ModelUnavailable says what to do (IMGSEARCH_MODEL=/path/to/checkpoint)
    return embedder


def _show(title: str, hits: list[Hit]) -> None:
    print(f"\n{title}")
    print(report.table(hits) if hits else "no results")


def run(settings: Settings, html: Path) -> int:
    report.check_writable(html)  # before anything else: the page is what the demo is for
    model = canonical_name(settings.model)
    print(f"model: {model}")
    embedder = _load(settings, model)  # first: a missing model fails before anything is written
    with _open(settings, model, embedder) as catalog:
        print(f"catalog: {catalog.engine.url.render_as_string()}")
        rows = list(sources.collect([str(SAMPLES / "manifest.csv")], tenant=TENANT))
        added = 0
        for row in rows:
            where = row.pop("_where")
            try:
                added += catalog.add_row(row)[1]
            except InvalidInput as exc:  # the bundled files are known good; say which one if not
                raise InvalidInput(f"{where}: {exc}") from exc
        print(f"sample images: {len(rows)} ({added} new, {len(rows) - added} already stored)")
        totals = pipeline.drain(
            catalog.engine,
            lambda _model: embedder,
            model=catalog.active_model,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            downloads=settings.downloads(),
            progress=sys.stderr.isatty(),
        )
        print(f"embedded {totals.ready}, failed {totals.failed}")

        query_image = SAMPLES / "queries" / "blue-tshirt.png"
        searches = [
            (
                "text: 'a red coffee mug'",
                {"text": "a red coffee mug", "parse": False},  # the model alone, no filter read
                None,
            ),
            (
                f"image: {query_image.name} (not in the catalog)",
                {"image": str(query_image)},
                report.thumbnail(query_image.read_bytes()),
            ),
            (
                "text: 'something to wear', filtered: t-shirts, caps or sneakers up to 25 EUR",
                {"text": "something to wear", "category": ["t-shirts", "caps", "sneakers"], "price_max": 25},
                None,
            ),
            ("text: 'mugs under 12 EUR'", {"text": "mugs under 12 EUR"}, None),  # words read as filters
        ]
        sections = []
        for title, query, thumb in searches:
            hits = catalog.search(tenant=TENANT, k=K, **query)  # type: ignore[arg-type]
            if hits.understood is not None and hits.understood.filters:
                read = {k: v for k, v in hits.understood.as_json().items() if k not in ("text", "fallback")}
                title += ", read as " + ", ".join(f"{k} {v}" for k, v in read.items())
            _show(title, hits)
            sections.append(report.Section(title, hits, thumb))
        sources_ = report.thumbnails(catalog.engine, [h.image_id for s in sections for h in s.hits], TENANT)
    report.write_page(html, f"imgsearch demo: {Path(model).name}", sections, sources_)
    print(f"\nresults page: {html.resolve()} (open it in a browser)")
    return 0
