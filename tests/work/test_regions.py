"""Region rows: written by the workers with the whole image, backfilled, copied to a product that
links the image, deleted when a rule goes off; searches rank an image by its best row, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidQuery, InvalidRegions
from imgsearch.settings import Settings
from imgsearch.work import pipeline
from tests.helpers import image_bytes


def drain(catalog: Catalog) -> Any:
    return pipeline.drain(
        catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
        downloads=catalog.settings.downloads(), progress=False,
    )  # fmt: skip


def rows(catalog: Catalog) -> list[Any]:
    with catalog.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT image_id, product_pk, region, box, category, embedding::text AS v "
                "FROM imgsearch.embeddings ORDER BY image_id, product_pk, region"
            )
        ).all()


def vector(row: Any) -> np.ndarray:
    v = np.array(row.v.strip("[]").split(","), dtype=np.float64)
    return v / np.linalg.norm(v)


def test_workers_write_an_images_regions_with_it(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        rule = catalog.regions.set(grid=2)
        assert (rule.source, rule.grid, rule.max_regions) == ("grid", 2, 5)
        catalog.add(image_bytes(1, (60, 40)), tenant="acme", product_id="a", category="tees")
        catalog.add(image_bytes(2, (40, 40)), tenant="acme", product_id="b", category="bags")
        assert drain(catalog).ready == 2
        found = rows(catalog)
        assert [(r.region, r.box) for r in found[:6]] == [
            (0, None), (1, [0, 0, 30, 20]), (2, [30, 0, 60, 20]), (3, [0, 20, 30, 40]), (4, [30, 20, 60, 40]),
            (5, [15, 10, 45, 30]),
        ]  # fmt: skip
        assert len(found) == 12 and {r.category for r in found} == {"tees", "bags"}
        assert catalog.regions.counts() == {"images": 2, "rows": 10}
        # the same bytes linked to another product: its rows come with the regions
        catalog.add(image_bytes(1, (60, 40)), tenant="acme", product_id="c", category="sale")
        assert len(rows(catalog)) == 18
        assert {r.category for r in rows(catalog) if r.region > 0} == {"tees", "bags", "sale"}


def test_a_search_ranks_each_image_by_its_best_row_exactly(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.regions.set(grid=2)
        for i in range(12):
            catalog.add(image_bytes(i, (48, 32)), tenant="acme", product_id=f"p{i}", category="a" if i % 2 else "b")
        drain(catalog)
        stored = rows(catalog)
        target = next(r for r in stored if r.region == 3 and r.image_id == stored[-1].image_id)
        query = vector(target)
        margin = catalog.settings.region_margin
        assert margin > 0
        for filters in ({}, {"category": "a"}, {"tenant": "acme", "price_max": None}):
            hits = catalog.search(vector=query.tolist(), k=5, **filters)
            ids = [h.image_id for h in hits]
            assert len(ids) == len(set(ids)) == 5  # each image once
            best: dict[int, tuple[float, float]] = {}  # (placed, distance) of each image's best row
            for r in stored:
                if filters.get("category") in (None, r.category):
                    distance = 1 - float(vector(r) @ query)
                    placed = (distance + (margin if r.region else 0.0), distance)
                    best[r.image_id] = min(best.get(r.image_id, (9.0, 9.0)), placed)
            assert ids == sorted(best, key=best.__getitem__)[:5]  # max-sim with the margin, the exact top 5
            for hit in hits:
                assert hit.distance == pytest.approx(best[hit.image_id][1], abs=2e-3)
        with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip), region_margin=0.0)) as nearest:
            top = nearest.search(vector=query.tolist(), k=3)[0]  # no margin: the region itself, first
            assert (top.image_id, top.region, top.distance) == (target.image_id, target.box, pytest.approx(0, abs=2e-3))
        whole = catalog.search(vector=query.tolist(), k=12, regions=False)
        assert {h.region for h in whole} == {None} and len(whole) == 12
        wholes = {r.image_id: 1 - float(vector(r) @ query) for r in stored if r.region == 0}
        assert [h.image_id for h in whole] == sorted(wholes, key=wholes.__getitem__)
        paged = catalog.search(vector=query.tolist(), k=4, offset=4)
        assert [h.image_id for h in paged] == sorted(best, key=best.__getitem__)[4:8]
        assert (paged[0].region is None) == (best[paged[0].image_id][0] == best[paged[0].image_id][1])
        grouped = catalog.search(vector=query.tolist(), k=4, group_by_product=True)
        assert [h.image_id for h in grouped] == sorted(best, key=best.__getitem__)[:4]  # one image a product
        with pytest.raises(InvalidQuery, match="regions must be"):
            catalog.search(vector=query.tolist(), regions="yes")  # type: ignore[arg-type]


def test_backfill_adds_regions_to_stored_images_and_off_removes_them(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        for i in range(5):
            catalog.add(image_bytes(i, (40, 40)), tenant="acme", product_id=f"p{i}", category="tees" if i < 3 else "bags")
        drain(catalog)
        assert len(rows(catalog)) == 5
        catalog.regions.set(grid=2, category="tees")  # the catalog's rule stays off
        done = catalog.regions.backfill(batch_size=2)
        assert (done.images, done.rows) == (3, 15)
        assert catalog.regions.backfill().images == 0  # nothing left to do
        catalog.regions.set(grid=3)
        catalog.regions.backfill()
        assert catalog.regions.counts() == {"images": 5, "rows": 3 * 5 + 2 * 18}
        # a shop's facets and total count products, from the kept counts, with regions or without
        from imgsearch.search import facets
        from imgsearch.search.filters import Filters

        with catalog.engine.connect() as conn:
            for region_rows in (True, False):
                assert facets.kept_counts(conn, Filters(tenant="acme", region_rows=region_rows), False)
                assert facets.kept_counts(conn, Filters(tenant="acme", category="tees", region_rows=region_rows), False)
            assert not facets.kept_counts(conn, Filters(tenant="acme", price_max=10, region_rows=True), False)
        for regions in (True, False):
            counted = catalog.search(vector=vector(rows(catalog)[0]).tolist(), tenant="acme", facets=True, total=True, regions=regions)
            assert counted.total == 5 and counted.facets is not None
            assert counted.facets.category == {"tees": 3, "bags": 2}
            tees = catalog.search(vector=vector(rows(catalog)[0]).tolist(), tenant="acme", category="tees", facets=True, total=True, regions=regions)
            assert tees.total == 3 and tees.facets is not None and tees.facets.category == {"tees": 3}
        catalog.regions.set(off=True, category="tees")
        assert catalog.regions.counts() == {"images": 2, "rows": 36}
        catalog.regions.set(off=True)
        assert catalog.regions.counts() == {"images": 0, "rows": 0}
        assert len(rows(catalog)) == 5


def test_a_backfill_leaves_the_planner_counting_its_rows(database_url: str, tiny_siglip: Path) -> None:
    """Region rows multiply a catalog's rows: past autovacuum's rule, the backfill analyses the table
    at once (a plan made on the old count would be made for a sixth of the rows)."""
    reltuples = text("SELECT reltuples FROM pg_class WHERE oid = 'imgsearch.embeddings'::regclass")
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        for i in range(12):
            catalog.add(image_bytes(i, (40, 40)), tenant="acme", product_id=f"p{i}")
        drain(catalog)
        with catalog.engine.connect() as conn:
            assert conn.execute(reltuples).scalar() < 12  # 12 rows: under the rule, not analysed
        catalog.regions.set(grid=2)
        assert catalog.regions.backfill().rows == 60
        with catalog.engine.connect() as conn:
            assert conn.execute(reltuples).scalar() == 72


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ({}, "one of grid, detector or off"),
        ({"grid": 2, "off": True}, "one of grid, detector or off"),
        ({"grid": 9}, "grid must be"),
        ({"grid": "3"}, "grid must be"),
        ({"grid": 2, "max_regions": 100}, "max_regions"),
        ({"grid": 2, "category": ""}, "category"),
    ],
)
def test_bad_region_settings_are_refused_and_change_nothing(
    database_url: str, tiny_siglip: Path, how: dict[str, Any], named: str
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        with pytest.raises(InvalidRegions, match=named):
            catalog.regions.set(**how)
        assert catalog.regions.rules() == {}


def test_a_category_named_like_an_injection_is_a_value(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        name = "x'); DROP TABLE imgsearch.products; --"
        catalog.regions.set(grid=2, category=name)
        assert list(catalog.regions.rules()) == [name]
        assert catalog.categories() == []  # products is still there


def test_boosts_lift_images_placed_by_their_best_region(database_url: str, tiny_siglip: Path) -> None:
    """With learned boosts, an image keeps its place by its best row and the margin, and is
    lifted from there (boosting.order's rule over the images' places)."""
    settings = Settings(model=str(tiny_siglip), boost_max_lift=4, boost_product_weight=1.0)
    with Catalog.open(database_url, settings=settings) as catalog:
        catalog.regions.set(grid=2)
        for i in range(12):
            catalog.add(image_bytes(i, (48, 32)), tenant="acme", product_id=f"p{i}")
        drain(catalog)
        stored = rows(catalog)
        query = vector(next(r for r in stored if r.region == 2))
        margin = catalog.settings.region_margin
        best: dict[int, float] = {}
        for r in stored:
            placed = 1 - float(vector(r) @ query) + (margin if r.region else 0.0)
            best[r.image_id] = min(best.get(r.image_id, 9.0), placed)
        plain = sorted(best, key=best.__getitem__)
        assert [h.image_id for h in catalog.search(vector=query.tolist(), k=12)] == plain
        lifted, half = plain[9], plain[6]  # a full boost at place 10, half of one at place 7
        with catalog.engine.begin() as conn:
            for image_id, boost in ((lifted, 1.0), (half, 0.5)):
                conn.execute(
                    text(
                        "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, "
                        "conversions, expected) SELECT p.id, '', p.tenant, p.product_id, :b, 50, 0, 10 "
                        "FROM imgsearch.products p JOIN imgsearch.image_products l ON l.product_pk = p.id "
                        "WHERE l.image_id = :i"
                    ),
                    {"b": boost, "i": image_id},
                )
        catalog._searcher.router.forget_graphs()
        boosts = {lifted: 1.0, half: 0.5}
        # place - lift x boost; at a tie, the boosted hit first: 7 - 2 = 5, 10 - 4 = 6
        expected = sorted(plain, key=lambda i: (plain.index(i) + 1 - 4 * boosts.get(i, 0), -boosts.get(i, 0)))
        assert expected.index(half) == 4 and expected.index(lifted) == 6
        hits = catalog.search(vector=query.tolist(), k=8)
        assert [h.image_id for h in hits] == expected[:8]
        assert {h.image_id: h.boost for h in hits}[lifted] == pytest.approx(1.0)
        assert len({h.image_id for h in hits}) == 8
        page2 = catalog.search(vector=query.tolist(), k=4, offset=8)
        assert [h.image_id for h in page2] == expected[8:12]  # pages follow the one order


def test_shop_the_look_without_a_detector_searches_the_quarters_and_centre(
    database_url: str, tiny_siglip: Path
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        for i in range(6):
            catalog.add(image_bytes(i, (32, 32)), tenant="acme", product_id=f"p{i}")
        drain(catalog)
        looks = catalog.search_look(image=image_bytes(99, (64, 48)), tenant="acme", k=3)
        assert [look.box for look in looks] == [
            [0, 0, 32, 24], [32, 0, 64, 24], [0, 24, 32, 48], [32, 24, 64, 48], [16, 12, 48, 36],
        ]  # fmt: skip
        assert all(look.label is None and look.score is None and len(look.hits) == 3 for look in looks)
        # the photo is decoded once and its crops embedded together: each object finds what a
        # search of its box finds
        for look in looks:
            alone = catalog.search(image=image_bytes(99, (64, 48)), box=look.box, tenant="acme", k=3)
            assert [h.image_id for h in look.hits] == [h.image_id for h in alone]
            assert [h.distance for h in look.hits] == pytest.approx([h.distance for h in alone], abs=1e-5)
        assert len(catalog.search_look(image=image_bytes(99, (64, 48)), objects=2)) == 2
        with pytest.raises(InvalidQuery, match="objects must be"):
            catalog.search_look(image=image_bytes(99), objects=0)


def test_a_detectors_boxes_become_regions_and_name_the_shops_categories(
    database_url: str, tiny_siglip: Path, tiny_yolos: Path
) -> None:
    from imgsearch.embed.regions import Detector, Rule, kept_boxes

    picture = image_bytes(7, (80, 60))
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        rule = catalog.regions.set(detector=str(tiny_yolos), min_score=0.2, min_area=0.05)
        found = Detector(str(tiny_yolos)).detect(catalog.embedder.decode(picture), rule)
        assert found and all(f.label in ("mugs", "bags", "caps") and f.score >= 0.2 for f in found)
        boxes = [f.box for f in found]
        assert all(0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60 for x0, y0, x1, y1 in boxes)
        catalog.add(picture, tenant="acme", product_id="a", category="mugs")
        catalog.add(image_bytes(8, (40, 40)), tenant="acme", product_id="b", category="bags")
        drain(catalog)
        stored = rows(catalog)
        assert [tuple(r.box) for r in stored if r.region > 0 and r.category == "mugs"] == boxes
        # the tiny detector's ten boxes overlap: merged into fewer by NMS
        _, model, _ = Detector(str(tiny_yolos)).load()
        assert len(boxes) < model.config.num_detection_tokens
        # none reaches a higher score: no regions, whatever else the image holds
        assert kept_boxes([(0, 0, 80, 60)], [f.score for f in found][:1], 80, 60, Rule("detector", detector="x", min_score=0.9)) == []
        looks = catalog.search_look(image=picture, tenant="acme", k=5)
        assert [look.box for look in looks] == [list(b) for b in boxes]
        for look in looks:  # a label naming a category of the shop filters its hits
            assert look.label in ("mugs", "bags", "caps")
            assert {h.category for h in look.hits} <= ({look.label} if look.label in ("mugs", "bags") else {"mugs", "bags"})
        with pytest.raises(InvalidRegions, match="cannot load the detector"):
            catalog.regions.set(detector=str(tiny_siglip))  # a checkpoint, but not a detector's
