"""The SQL console and hybrid fusion where images have region rows: each image comes once, by the
closer of its whole row and its best region plus the margin, as the library's search ranks it;
a hybrid hit shows the region the semantic side matched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.settings import Settings
from imgsearch.work import pipeline
from tests.conftest import new_database
from tests.helpers import image_bytes

CONSOLE = text(
    "SELECT image_id, product_id, distance FROM imgsearch.search_vector(CAST(:q AS vector), :k, :tenant, :category)"
)
WORDS = ["red shoe", "blue bag", "green hat", "black coat"]


def drain(catalog: Catalog) -> Any:
    return pipeline.drain(
        catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
        downloads=catalog.settings.downloads(), progress=False,
    )  # fmt: skip


def stored(catalog: Catalog) -> list[tuple[int, int, np.ndarray, str]]:
    with catalog.engine.connect() as conn:
        found = conn.execute(
            text("SELECT image_id, region, embedding::text AS v, category FROM imgsearch.embeddings")
        ).all()
    out = []
    for r in found:
        v = np.array(r.v.strip("[]").split(","), dtype=np.float64)
        out.append((r.image_id, r.region, v / np.linalg.norm(v), r.category))
    return out


def ranked(
    rows: list[tuple[int, int, np.ndarray, str]], query: np.ndarray, margin: float, category: str | None
) -> list[int]:
    """The images in order of min(whole row's distance, best region's + margin)."""
    best: dict[int, float] = {}
    for image_id, region, v, row_category in rows:
        if category in (None, row_category):
            placed = 1 - float(v @ query) + (margin if region else 0.0)
            best[image_id] = min(best.get(image_id, 9.0), placed)
    return sorted(best, key=best.__getitem__)


@pytest.fixture(scope="module")
def shop(server_url: str, template_db: str, tiny_siglip: Path) -> Any:
    url = new_database(server_url, template_db)
    with Catalog.open(url, settings=Settings(model=str(tiny_siglip))) as catalog:
        catalog.regions.set(grid=2)
        for i in range(16):
            catalog.add(
                image_bytes(i, (48, 32)), tenant="acme" if i % 4 else "beta", product_id=f"p{i}",
                category="a" if i % 2 else "b", title=WORDS[i % 4],
            )  # fmt: skip
        assert drain(catalog).ready == 16
        yield catalog, url


def test_console_searches_rank_each_image_once_by_its_best_row(shop: tuple[Catalog, str]) -> None:
    catalog = shop[0]
    rows = stored(catalog)
    assert {region for _, region, _, _ in rows} == {0, 1, 2, 3, 4, 5}
    target = next(r for r in rows if r[1] == 3)
    query = target[2]
    for tenant, category in [(None, None), (None, "a"), ("acme", None), ("acme", "a"), ("beta", None)]:
        with catalog.engine.connect() as conn:
            found = conn.execute(
                CONSOLE, {"q": str(query.tolist()), "k": 5, "tenant": tenant, "category": category}
            ).all()
        ids = [r.image_id for r in found]
        assert len(ids) == len(set(ids)) == (4 if tenant == "beta" else 5)  # each image once
        library = catalog.search(vector=query.tolist(), k=5, tenant=tenant, category=category)
        assert ids == [h.image_id for h in library]
        assert [r.distance for r in found] == pytest.approx([h.distance for h in library], abs=2e-3)
        if tenant is None:  # every shop's rows are the ones stored
            assert ids == ranked(rows, query, catalog.settings.region_margin, category)[:5]
    with catalog.engine.connect() as conn:
        first = conn.execute(
            CONSOLE, {"q": str(query.tolist()), "k": 1, "tenant": None, "category": None}
        ).one()
        assert first.image_id == target[0] and first.distance == pytest.approx(0.0, abs=2e-3)
        # more like this image: its stored whole row, each other image once
        similar = (
            conn.execute(text("SELECT image_id FROM imgsearch.search_similar(:id, 15)"), {"id": target[0]})
            .scalars()
            .all()
        )
        assert len(similar) == len(set(similar)) == 15 and target[0] not in similar


def test_the_console_margin_is_a_setting_checked_like_the_librarys(shop: tuple[Catalog, str]) -> None:
    catalog = shop[0]
    rows = stored(catalog)
    query = next(r for r in rows if r[1] == 2)[2]
    whole = [h.image_id for h in catalog.search(vector=query.tolist(), k=16, regions=False)]
    for margin, expected in [
        ("0", ranked(rows, query, 0.0, None)),
        ("2", whole),
        (" .5 ", ranked(rows, query, 0.5, None)),
    ]:
        with catalog.engine.begin() as conn:
            conn.execute(text("SELECT set_config('imgsearch.region_margin', :m, true)"), {"m": margin})
            found = conn.execute(
                CONSOLE, {"q": str(query.tolist()), "k": 16, "tenant": None, "category": None}
            )
            assert [r.image_id for r in found] == expected
    for bad in ["-0.1", "2.5", "abc", "0.1; DROP TABLE imgsearch.images"]:
        with (
            catalog.engine.begin() as conn,
            pytest.raises(DBAPIError, match=r"imgsearch\.region_margin must be from 0 to 2"),
        ):
            conn.execute(text("SELECT set_config('imgsearch.region_margin', :m, true)"), {"m": bad})
            conn.execute(CONSOLE, {"q": str(query.tolist()), "k": 3, "tenant": None, "category": None}).all()
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar() == 16


def test_a_hybrid_hit_shows_the_region_its_semantic_side_matched(
    shop: tuple[Catalog, str], tiny_siglip: Path
) -> None:
    # no margin: regions win wherever they are nearer
    settings = Settings(model=str(tiny_siglip), region_margin=0.0)
    with Catalog.open(shop[1], settings=settings) as catalog:
        semantic = {h.image_id: h for h in catalog.search(text="red shoe", tenant="acme", k=12)}
        hybrid = catalog.search(text="red shoe", tenant="acme", k=12, mode="hybrid")
    assert any(h.region is not None for h in semantic.values())
    assert len({h.product_id for h in hybrid}) == len(hybrid)  # each product once
    checked = 0
    for hit in hybrid:
        seen = semantic.get(hit.image_id)
        if "semantic" in hit.matched_by and seen is not None:
            assert (hit.region, hit.distance) == (seen.region, pytest.approx(seen.distance, abs=1e-6))
            checked += 1
        elif "semantic" not in hit.matched_by:
            assert hit.region is None  # a product only the words found: its whole image
    assert checked and any(h.region is not None for h in hybrid)


def test_a_tenants_console_login_searches_by_regions_without_reading_the_rules(shop: tuple[Catalog, str]) -> None:
    catalog = shop[0]
    rows = stored(catalog)
    query = next(r for r in rows if r[1] == 4)[2]
    tenancy.create_login(catalog.engine, "regions_acme", "acme", password="s3cret")
    url = make_url(catalog.engine.url)
    with psycopg.connect(
        host=url.query["host"], user="regions_acme", password="s3cret", dbname=url.database, autocommit=True
    ) as conn:
        found = conn.execute(
            "SELECT image_id FROM imgsearch.search_vector(%s::vector, 6)", (str(query.tolist()),)
        ).fetchall()
        ids = [r[0] for r in found]
        assert ids == [h.image_id for h in catalog.search(vector=query.tolist(), k=6, tenant="acme")]
        assert len(set(ids)) == 6
        assert conn.execute("SELECT imgsearch._regions_on()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT category FROM imgsearch.region_rules")  # the rules stay the catalog's
