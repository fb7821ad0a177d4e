"""Searches through the catalog: the right top-k at every filter selectivity, every query kind,
re-ranking options, no injection, bad arguments named — against the real PostgreSQL + pgvector."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from imgsearch import Catalog, NotFound
from imgsearch.db.models import Image, Product
from imgsearch.errors import DimensionMismatch, InvalidQuery
from imgsearch.settings import Settings
from tests.helpers import exact_similarities, image_bytes, nested, unit
from tests.search.conftest import CLUSTERS, DIM, Fixture, K, N, queries, stored_mean

# (name, filter kwargs, python predicate over row index) — selectivities from 100% to 0.01%
FILTERS = [
    ("100%", {}, lambda r: True),
    ("10% near", {"category": [f"c{c:02d}" for c in range(5)]}, lambda r: r["category"] < "c05"),
    ("10% far", {"category": [f"c{c:02d}" for c in range(25, 30)]}, lambda r: "c25" <= r["category"] < "c30"),
    ("1% near", {"category": "c00", "price_max": 5}, lambda r: r["category"] == "c00" and r["price"] <= 5),
    (
        "1% far",
        {"category": "c30", "price_min": 300, "price_max": 305},
        lambda r: r["category"] == "c30" and 300 <= r["price"] <= 305,
    ),
    ("0.1%", {"attributes": {"bucket": 7}}, lambda r: r["attributes"]["bucket"] == 7),
    (
        "0.2% tenant",
        {"tenant": "globex", "category": "c00"},
        lambda r: r["tenant"] == "globex" and r["category"] == "c00",
    ),
    ("0.01%", {"attributes": {"tag": "unique"}}, lambda r: "tag" in r["attributes"]),
]


@pytest.mark.parametrize(
    ("exact_max_rows", "exact_max_fraction"),
    [(4000, 0.15), (50, 0.0)],
    ids=["default-threshold", "hnsw-on-selective"],
)
@pytest.mark.parametrize(("name", "kwargs", "predicate"), FILTERS, ids=[f[0] for f in FILTERS])
def test_right_top_k_at_every_selectivity(
    data: Fixture, name: str, kwargs: dict, predicate: Any, exact_max_rows: int, exact_max_fraction: float
) -> None:
    mask = np.array([predicate(r) for r in data.rows])
    assert mask.any()
    settings = Settings(exact_max_rows=exact_max_rows, exact_max_fraction=exact_max_fraction)
    recalls = []
    with Catalog.open(data.url, settings=settings) as catalog:
        for q in queries(data, 0):
            hits = catalog.search(vector=q, k=K, **kwargs)
            assert len(hits) == min(K, int(mask.sum())), f"{name}: short result"
            assert all(predicate(data.rows[int(np.flatnonzero(data.ids == h.image_id)[0])]) for h in hits)
            distances = [h.distance for h in hits]
            assert distances == sorted(distances)
            sims = exact_similarities(data.vectors[mask], q)
            truth = set(data.ids[mask][np.argsort(-sims)[:K]].tolist())
            recalls.append(len(truth & {h.image_id for h in hits}) / min(K, len(truth)))
    assert np.mean(recalls) >= 0.98, f"{name}: recall {np.mean(recalls):.3f}"


def test_unfiltered_searches_reach_every_cluster(catalog: Catalog, data: Fixture) -> None:
    """Two queries in each of the catalog's clusters, not only one: an HNSW graph can leave a
    whole cluster out of a search's reach (bench/search/index_build.py), which queries around one
    cluster never show. Recall@10 against exact over all of them, and no query missing its own."""
    recalls = []
    for cluster in range(CLUSTERS):
        for q in queries(data, cluster, 2):
            hits = catalog.search(vector=q, k=K)
            truth = set(data.ids[np.argsort(-exact_similarities(data.vectors, q))[:K]].tolist())
            recalls.append(len(truth & {h.image_id for h in hits}) / K)
    assert np.mean(recalls) >= 0.98 and min(recalls) >= 0.5, (np.mean(recalls), min(recalls))


def test_offset_pages_through_the_same_order(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 1, 1)[0]
    first = catalog.search(vector=q, k=20)
    page = catalog.search(vector=q, k=10, offset=10)
    assert [h.image_id for h in page] == [h.image_id for h in first[10:]]


def test_exactly_one_query_kind(catalog: Catalog, data: Fixture) -> None:
    with pytest.raises(InvalidQuery, match="exactly one query"):
        catalog.search(k=3)
    with pytest.raises(InvalidQuery, match=r"got \['similar_to', 'vector'\]"):
        catalog.search(vector=data.vectors[0], similar_to=int(data.ids[0]))
    with pytest.raises(DimensionMismatch, match="query vector has 31 dimensions, expected 32"):
        catalog.search(vector=data.vectors[0][:31])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be an integer from 1 to 1000"),
        ({"k": 1001}, "k must be an integer"),
        ({"k": "10"}, "k must be an integer"),
        ({"offset": -1}, "offset must be"),
        ({"price_min": "cheap"}, "price_min must be a number"),
        ({"price_min": float("nan")}, "price_min must be finite"),
        ({"price_min": 10, "price_max": 5}, "above price_max"),
        ({"category": []}, "category must be a string or a non-empty list"),
        ({"category": 5.5}, "category must be a string, got float"),
        ({"category": ["c01", None]}, "category must be a string, got NoneType"),
        ({"category": " "}, "category must not be empty"),
        ({"attributes": ["red"]}, "attributes must be a mapping"),
        ({"attributes": {"bucket": float("nan")}}, "must not hold NaN"),
        ({"attributes": {"bucket": "a\x00"}}, "NUL character"),
        ({"attributes": {"bucket": "\ud800"}}, "lone surrogate"),
        ({"attributes": {"bucket": {1}}}, "JSON values only"),
        ({"attributes": {"bucket": nested(40)}}, "deeper than 32"),
        ({"tenant": ""}, "tenant must not be empty"),
        ({"tenant": "ac\x00me"}, "tenant .* contains control characters"),
        ({"tenant": "\ud800"}, "tenant .* lone surrogate"),
        ({"category": "c0\x001"}, "category .* contains control characters"),
        ({"category": "c\x1f0"}, "category .* contains control characters"),
        ({"category": ["c01", "c\x7f"]}, "category .* contains control characters"),
        ({"category": ["c01", "\udfff"]}, "category .* lone surrogate"),
        ({"category": "c" * 1001}, "category is 1001 characters long; the limit is 1000"),
        ({"diversity": 1.5}, "diversity must be a number from 0"),
        ({"expand": 0}, "expand must be an integer from 1"),
        ({"min_score": float("nan")}, "min_score must be a cosine similarity"),
        ({"where": "1=1"}, "where must be a SQLAlchemy expression"),
        ({"min_probability": 0.5}, "min_probability applies to text queries only"),
    ],
)
def test_bad_search_arguments(catalog: Catalog, data: Fixture, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        catalog.search(vector=data.vectors[0], **kwargs)


@pytest.mark.parametrize("value", [2, -0.1, float("nan"), "0.5", True])
def test_min_probability_must_be_a_probability(catalog: Catalog, value: Any) -> None:
    with pytest.raises(InvalidQuery, match="min_probability must be a probability from 0 to 1"):
        catalog.search(text="red shoe", min_probability=value)


def test_price_bounds_past_numeric_range_select_what_the_price_limit_does(
    catalog: Catalog, data: Fixture
) -> None:
    """A bound numeric can't even hold selects the rows a bound at the limit of stored prices does."""
    q = data.vectors[0]
    below_limit = catalog.search(vector=q, price_max=10**10)
    assert len(below_limit) == K
    assert catalog.search(vector=q, price_max="1e200000") == below_limit
    assert catalog.search(vector=q, price_min="-1e200000", price_max=10**10) == below_limit
    assert catalog.search(vector=q, price_min="1e200000") == []
    assert catalog.search(vector=q, price_max="-1e200000") == []
    with pytest.raises(InvalidQuery, match="above price_max"):
        catalog.search(vector=q, price_min="1e200000", price_max="1e100000")
    # a bound too small for numeric (found by Schemathesis) selects what 0 does: prices have 4 places
    assert catalog.search(vector=q, price_max="1.45E-24321", k=5) == catalog.search(vector=q, price_max=0, k=5)
    assert catalog.search(vector=q, price_min="-1e-30000", k=5) == catalog.search(vector=q, k=5)


def test_similar_to_an_id_past_bigint_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="no embedded image with id 1180591620717411303424"):
        catalog.search(similar_to=2**70)
    with pytest.raises(NotFound):
        catalog.search_select(similar_to=2**70)


INJECTIONS = [
    "'; DROP TABLE imgsearch.images; --",
    "x' OR '1'='1",
    "c00' OR 1=1 --",
    "$$; SELECT 1; $$",
    "\\'",
]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_strings_in_every_filter_are_just_values(
    catalog: Catalog, data: Fixture, evil: str
) -> None:
    q = data.vectors[0]
    assert catalog.search(vector=q, tenant=evil) == []
    assert catalog.search(vector=q, category=evil) == []
    assert catalog.search(vector=q, category=[evil, "c00' --"]) == []
    assert catalog.search(vector=q, attributes={evil: evil}) == []
    assert catalog.search(vector=q, attributes={"bucket": evil}) == []
    with pytest.raises(InvalidQuery):
        catalog.search(vector=q, price_min=evil)
    with pytest.raises(InvalidQuery):
        catalog.search(vector=q, k=evil)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery):
        catalog.search(similar_to=evil)  # type: ignore[arg-type]
    with catalog.engine.begin() as conn:
        rows = conn.execute(
            text("SELECT * FROM imgsearch.search_vector(CAST(:q AS vector), 5, :t, :c, NULL, NULL)"),
            {"q": str(q.tolist()), "t": evil, "c": evil},
        ).all()
        assert rows == []
        assert conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar_one() == N


def test_similar_to_leaves_the_item_out_and_respects_tenant(catalog: Catalog, data: Fixture) -> None:
    source = int(data.ids[11])  # tenant acme
    hits = catalog.search(similar_to=source, k=5)
    assert source not in [h.image_id for h in hits] and len(hits) == 5
    direct = catalog.search(vector=data.vectors[11], k=6)
    assert [h.image_id for h in direct if h.image_id != source][:5] == [h.image_id for h in hits]
    with pytest.raises(NotFound, match=f"no embedded image with id {source}"):
        catalog.search(similar_to=source, tenant="globex")
    with pytest.raises(NotFound, match="no embedded image with id 999999999"):
        catalog.search(similar_to=999999999)


def test_similar_to_product_searches_by_its_images_and_leaves_them_all_out(
    catalog: Catalog, data: Fixture
) -> None:
    own = {int(data.ids[10]), int(data.ids[11])}  # product p5 of tenant acme: two photos
    hits = catalog.search(similar_to_product="p5", tenant="acme", k=10)
    direct = catalog.search(vector=stored_mean(data, [10, 11]), tenant="acme", k=12)
    assert [h.image_id for h in hits] == [h.image_id for h in direct if h.image_id not in own][:10]
    assert len(hits) == 10 and not own & {h.image_id for h in hits}
    # by image, the product's other photo comes first; by product, neither does
    assert catalog.search(similar_to=int(data.ids[10]), k=1)[0].image_id == int(data.ids[11])
    grouped = catalog.search(similar_to_product="p5", tenant="acme", k=5, group_by_product=True)
    assert len({h.product_id for h in grouped}) == 5 and "p5" not in {h.product_id for h in grouped}
    # with filters: a selective one (an exact scan) and the product's own category (one HNSW pass)
    cheap = catalog.search(similar_to_product="p5", tenant="acme", k=4, price_max=15)
    assert cheap and all(h.price is not None and h.price <= 15 for h in cheap)
    category = data.rows[10]["category"]
    same = catalog.search(similar_to_product="p5", tenant="acme", category=category, k=10)
    assert (
        len(same) == 10 and {h.category for h in same} == {category} and not own & {h.image_id for h in same}
    )
    # a number is read as its digits, spaces dropped, as uploads store product ids
    assert catalog.search(similar_to_product=" p5 ", tenant=" acme ", k=10) == hits


def test_similar_to_product_names_what_is_wrong(catalog: Catalog, data: Fixture) -> None:
    with pytest.raises(InvalidQuery, match="similar_to_product needs tenant="):
        catalog.search(similar_to_product="p5")
    with pytest.raises(NotFound, match=r"^tenant 'globex' has no product 'p5'$"):
        catalog.search(similar_to_product="p5", tenant="globex")  # acme's: not another tenant's
    for bad in ("p5' OR '1'='1", "'; DROP TABLE imgsearch.products; --"):
        with pytest.raises(NotFound, match="has no product"):
            catalog.search(similar_to_product=bad, tenant="acme")
    with pytest.raises(InvalidQuery, match="similar_to_product must be a string, got list"):
        catalog.search(similar_to_product=["p5"], tenant="acme")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery, match=r"got \['similar_to', 'similar_to_product'\]"):
        catalog.search(similar_to=int(data.ids[0]), similar_to_product="p5", tenant="acme")


def test_similar_to_product_needs_an_embedded_image(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add(image=image_bytes(1), tenant="acme", product_id="new")  # pending: no embedding yet
        with pytest.raises(NotFound, match=r"^product 'new' of tenant 'acme' has no embedded image yet$"):
            catalog.search(similar_to_product="new", tenant="acme")
        pending = "SELECT * FROM imgsearch.search_similar_product('acme', 'new')"
        with (
            pytest.raises(DBAPIError, match="product 'new' of tenant 'acme' has no embedded"),
            catalog.engine.begin() as conn,
        ):
            conn.execute(text(pending))
        catalog.add(embedding=unit(catalog.dim, 1), tenant="acme", product_id="new")
        catalog.add(embedding=unit(catalog.dim, 2), tenant="acme", product_id="other")
        [hit] = catalog.search(similar_to_product="new", tenant="acme")
        assert hit.product_id == "other"


def test_similar_to_product_as_a_composable_select(catalog: Catalog, data: Fixture) -> None:
    stmt = catalog.search_select(similar_to_product="p5", tenant="acme", k=10)
    with catalog.engine.begin() as conn:
        catalog.apply_search_settings(conn)
        rows = conn.execute(stmt).all()
    hits = catalog.search(similar_to_product="p5", tenant="acme", k=10)
    assert [r.image_id for r in rows] == [h.image_id for h in hits]


def test_where_takes_any_sqlalchemy_expression(catalog: Catalog, data: Fixture) -> None:
    hits = catalog.search(vector=data.vectors[0], k=5, where=Product.product_id.in_(["p1", "p2", "p3"]))
    assert {h.product_id for h in hits} <= {"p1", "p2", "p3"} and len(hits) == 5  # 2 images per product


def test_group_by_product_returns_best_image_per_product(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 2, 1)[0]
    grouped = catalog.search(vector=q, k=10, group_by_product=True)
    products = [h.product_id for h in grouped]
    assert len(products) == 10 and len(set(products)) == 10
    plain = catalog.search(vector=q, k=40)
    best: dict[str, int] = {}
    for hit in plain:
        best.setdefault(hit.product_id, hit.image_id)
    assert [h.image_id for h in grouped] == list(best.values())[:10]


def test_diversity_trades_relevance_for_variety(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 3, 1)[0]
    plain = catalog.search(vector=q, k=10)
    assert [h.image_id for h in catalog.search(vector=q, k=10, diversity=1.0)] == [h.image_id for h in plain]
    varied = catalog.search(vector=q, k=10, diversity=0.3)
    assert len(varied) == 10

    def redundancy(hits: list) -> float:
        vs = np.stack([data.vectors[int(np.flatnonzero(data.ids == h.image_id)[0])] for h in hits])
        sims = vs @ vs.T
        return float(sims[np.triu_indices(len(hits), 1)].mean())

    assert redundancy(varied) < redundancy(plain)
    assert varied[0].image_id == plain[0].image_id  # the most relevant hit still comes first


def test_expand_searches_with_the_averaged_query(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 4, 1)[0]
    top = catalog.search(vector=q, k=3)
    neighbours = np.stack([data.vectors[int(np.flatnonzero(data.ids == h.image_id)[0])] for h in top])
    averaged = q + neighbours.sum(axis=0)
    expanded = catalog.search(vector=q, k=10, expand=3)
    direct = catalog.search(vector=averaged / np.linalg.norm(averaged), k=10)
    assert [h.image_id for h in expanded][:8] == [h.image_id for h in direct][
        :8
    ]  # halfvec rounding at the tail


def test_expand_with_filters_that_match_nothing_finds_nothing(catalog: Catalog, data: Fixture) -> None:
    """Schemathesis found it: no first hits to expand with was a 500 (an empty array's shape)."""
    q = queries(data, 6, 1)[0]
    assert catalog.search(vector=q, k=5, expand=1, attributes={"no such key": {}}) == []
    assert catalog.search(vector=q, k=5, expand=2, category="no such category", diversity=0.5) == []


def test_min_score_drops_weak_hits(catalog: Catalog, data: Fixture) -> None:
    q = queries(data, 5, 1)[0]
    plain = catalog.search(vector=q, k=50)
    cut = plain[20].score
    kept = catalog.search(vector=q, k=50, min_score=cut)
    assert [h.image_id for h in kept] == [h.image_id for h in plain if h.score >= cut]
    assert all(abs(h.score - (1 - h.distance)) < 1e-9 for h in kept)


def test_text_and_image_queries_use_the_embedder(database_url: str, tiny_siglip: Path) -> None:
    from PIL import Image as PILImage

    from imgsearch.embed.model import Embedder

    embedder = Embedder(str(tiny_siglip))
    pictures = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        buf = io.BytesIO()
        PILImage.new("RGB", (40 + i, 40), colour).save(buf, "PNG")
        pictures.append(buf.getvalue())
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        ids = [
            catalog.add(image=p, embedding=embedder.embed_image(p), tenant="acme", product_id=f"p{i}")
            for i, p in enumerate(pictures)
        ]
        hits = catalog.search(image=pictures[2], k=4)
        assert hits[0].image_id == ids[2] and hits[0].distance < 2e-3
        assert hits[0].probability is None
        text_hits = catalog.search(text="a blue square", k=4)
        assert len(text_hits) == 4
        cos = embedder.embed_text("a blue square") @ embedder.embed_image(pictures[0])
        by_id = {h.image_id: h for h in text_hits}
        assert by_id[ids[0]].probability == pytest.approx(embedder.probability(cos), abs=2e-3)
        threshold = sorted(h.probability for h in text_hits)[2]
        kept = catalog.search(text="a blue square", k=4, min_probability=threshold)
        assert {h.image_id for h in kept} == {h.image_id for h in text_hits if h.probability >= threshold}


def test_text_and_image_queries_hold_no_connection_while_embedding(
    database_url: str, tiny_siglip: Path
) -> None:
    """The forward pass (tens of ms on a CPU) runs before the search takes a connection, so a pool
    isn't tied up by model work; a repeated text query skips it (the embedder's cache)."""
    from PIL import Image as PILImage

    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        for i in range(5):
            catalog.add(embedding=unit(catalog.dim, i), tenant="acme", product_id=f"p{i}")
        checked_out: list[tuple[int, int]] = []
        catalog.embedder.load()
        for tower in (catalog.embedder._model.text_model, catalog.embedder._model.vision_model):
            tower.register_forward_hook(
                lambda *_: checked_out.append(
                    (catalog.search_engine.pool.checkedout(), catalog.engine.pool.checkedout())
                )
            )
        buf = io.BytesIO()
        PILImage.new("RGB", (40, 40), "red").save(buf, "PNG")

        first = catalog.search(text="a red square", tenant="acme", k=3)
        again = catalog.search(text="a red square", tenant="acme", k=3)
        catalog.search(image=buf.getvalue(), tenant="acme", k=3)
        catalog.search_select(text="a blue square", k=3)

        assert checked_out == [(0, 0)] * 3  # two texts (one cached) and an image
        assert again == first and len(first) == 3
        assert catalog.embedder.text_cache_info().hits == 1


def test_search_by_vector_never_loads_weights(catalog: Catalog, data: Fixture) -> None:
    catalog.search(vector=data.vectors[0], k=3)
    catalog.search(similar_to=int(data.ids[3]), k=3)
    created = catalog._context.active.created
    assert created is None or not created.loaded


def test_images_table_query_is_tenant_scoped_by_filter(catalog: Catalog) -> None:
    with catalog.engine.connect() as conn:
        tenants = set(conn.execute(select(Image.tenant).distinct()).scalars())
    assert tenants == {"acme", "globex"}
    assert {h.tenant for h in catalog.search(vector=np.ones(DIM), tenant="globex", k=30)} == {"globex"}
