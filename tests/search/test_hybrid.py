"""Product text and searches by mode: lexical matching (websearch syntax, typos, exact SKUs),
hybrid fusion with every filter on both sides, query understanding, facets and totals — against
the real PostgreSQL + pgvector."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput, InvalidQuery
from imgsearch.search.hybrid import Fusion

SHOP: list[tuple[str, str, str | None, str, dict[str, Any], float]] = [
    # product_id, title, brand, category, attributes, price
    ("SKU-100", "Red running shoes", "Adidas", "shoes", {"colour": "red", "size": 42}, 45),
    ("SKU-101", "Blue running shoes", "Nike", "shoes", {"colour": "blue", "size": 42}, 80),
    ("SKU-102", "Red leather bag", "Gucci", "bags", {"colour": "red"}, 900),
    ("SKU-103", "Green rain jacket", "Patagonia", "jackets", {"colour": "green"}, 120),
    ("SKU-104", "Red summer dress", None, "dresses", {"colour": "red"}, 35),
    ("SKU-105", "Trail running shoes", "Salomon", "shoes", {"colour": "black", "size": 44}, 140),
    ("SKU-106", "Canvas tote bag", "Adidas", "bags", {"colour": "white"}, 25),
    ("SKU-107", "Wool winter coat", "Patagonia", "jackets", {"colour": "grey"}, 260),
]


@pytest.fixture(scope="module")
def shop(server_url: str, template_db: str, tiny_siglip: Path) -> Iterator[Catalog]:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    rng = np.random.default_rng(7)
    with Catalog.open(url, model=str(tiny_siglip)) as catalog:
        rows = []
        for product_id, title, brand, category, attributes, price in SHOP:
            for _ in range(2):  # two photos a product
                rows.append(
                    {
                        "tenant": "acme", "product_id": product_id, "title": title, "brand": brand,
                        "category": category, "attributes": attributes, "price": price, "currency": "USD",
                        "description": f"{title}, made to last." if brand else None,
                        "embedding": rng.standard_normal(catalog.dim),
                    }
                )  # fmt: skip
        # another shop's product with the same words: never in acme's searches
        rows.append(
            {
                "tenant": "globex", "product_id": "G-1", "title": "Red running shoes", "brand": "Adidas",
                "category": "shoes", "price": 10, "embedding": rng.standard_normal(catalog.dim),
            }
        )  # fmt: skip
        catalog.add_many(rows)
        yield catalog


def ids(hits: Any) -> list[str]:
    return [hit.product_id for hit in hits]


def test_product_text_comes_back_with_the_hits(shop: Catalog) -> None:
    hits = shop.search(text="leather bag", tenant="acme", mode="lexical", parse=False)
    assert hits[0].product_id == "SKU-102"
    assert (hits[0].title, hits[0].brand, hits[0].currency) == ("Red leather bag", "Gucci", "USD")
    record = shop.get(hits[0].image_id)
    assert (record.title, record.brand, record.description) == (
        "Red leather bag",
        "Gucci",
        "Red leather bag, made to last.",
    )
    semantic = shop.search(text="leather bag", tenant="acme", mode="semantic", parse=False, k=20)
    assert {hit.title for hit in semantic} == {title for _, title, *_ in SHOP}


def test_lexical_search_reads_websearch_syntax(shop: Catalog) -> None:
    def lexical(query: str) -> list[str]:
        return ids(shop.search(text=query, tenant="acme", mode="lexical", parse=False, k=20))

    assert set(lexical("running shoes")) == {"SKU-100", "SKU-101", "SKU-105"}
    assert set(lexical("running shoes -trail")) == {"SKU-100", "SKU-101"}
    assert set(lexical('"summer dress"')) == {"SKU-104"}
    assert set(lexical("coat or tote")) == {"SKU-106", "SKU-107"}
    # the title weighs more than the description and the brand more than attribute values
    assert lexical("patagonia")[:2] == ["SKU-103", "SKU-107"]


def test_near_spellings_are_searched_only_when_the_words_match_nothing(
    server_url: str, template_db: str, tiny_siglip: Path
) -> None:
    from tests.conftest import new_database

    rng = np.random.default_rng(3)
    with Catalog.open(new_database(server_url, template_db), model=str(tiny_siglip)) as catalog:
        catalog.add_many(
            [
                {
                    "tenant": "acme", "product_id": product_id, "title": title, "category": category,
                    "embedding": rng.standard_normal(catalog.dim),
                }
                for product_id, title, category in [
                    ("SKU-300", "Trail jacket", "jackets"),
                    ("SKU-301", "Trail jackets for rain", "jackets"),
                    ("SKU-302", "Rain jacket", "outlet"),
                    ("SKU-303", "Trail jaket", "coats"),  # a near spelling of "trail jacket"
                ]
            ]
        )  # fmt: skip

        def lexical(words: str, **filters: Any) -> Any:
            return catalog.search(text=words, tenant="acme", mode="lexical", parse=False, total=True, **filters)

        # the words match: their products alone, however close another title's spelling
        found = lexical("trail jacket")
        assert (sorted(ids(found)), found.total) == (["SKU-300", "SKU-301"], 2)
        assert lexical("trail jacket", facets=True).facets.category == {"jackets": 2}
        # nothing matches the words: the near spellings of titles, brands and ids
        assert set(ids(lexical("trail jackt"))) == {"SKU-300", "SKU-301", "SKU-303"}
        assert set(ids(lexical("SKU-30"))) == {"SKU-300", "SKU-301", "SKU-302", "SKU-303"}
        # the rule asks the shop's products: a filter leaving none of the words' matches finds none
        assert ids(lexical("trail jacket", category="outlet")) == []
        catalog.search(text="trail jacket", tenant="acme", parse=False)  # its embedding into the cache
        with catalog.engine.begin() as conn:  # the console follows the same rule
            console = conn.execute(
                text("SELECT product_id, lexical_rank FROM imgsearch.search_hybrid('trail jacket', 10, tenant => 'acme')")
            ).all()
            counted = conn.execute(text("SELECT imgsearch.facets('trail jackt', 'acme')")).scalar_one()
        assert {r.product_id for r in console if r.lexical_rank is not None} == {"SKU-300", "SKU-301"}
        assert counted["total"] == 3


def test_lexical_search_forgives_typos_and_finds_an_exact_sku_first(shop: Catalog) -> None:
    hits = shop.search(text="addidas", tenant="acme", mode="lexical", parse=False)
    assert set(ids(hits)) == {"SKU-100", "SKU-106"}
    assert all(hit.matched_by == {"lexical": i + 1} for i, hit in enumerate(hits))
    assert all(hit.distance is None and hit.score is None for hit in hits)
    sku = shop.search(text="SKU-105", tenant="acme", mode="lexical", parse=False)
    assert sku[0].product_id == "SKU-105"


def test_lexical_search_keeps_to_the_filters_and_the_tenant(shop: Catalog) -> None:
    hits = shop.search(text="red", tenant="acme", mode="lexical", parse=False, price_max=50, k=20)
    assert set(ids(hits)) == {"SKU-100", "SKU-104"}
    assert (
        shop.search(text="red", tenant="acme", mode="lexical", parse=False, category="bags", total=True).total
        == 1
    )
    everyone = shop.search(text="running shoes red", mode="lexical", parse=False, k=20)
    assert {hit.tenant for hit in everyone} == {"acme", "globex"}
    assert "G-1" not in ids(shop.search(text="running shoes red", tenant="acme", mode="lexical", k=20))
    assert ids(shop.search(text="bag", tenant="acme", mode="lexical", parse=False, brand="Gucci")) == [
        "SKU-102"
    ]


def test_hybrid_is_the_default_with_product_text_and_fuses_both_sides(shop: Catalog) -> None:
    result = shop.search(text="addidas", tenant="acme", parse=False, k=8)
    assert result.mode == "hybrid"
    assert len(set(ids(result))) == len(result) == 8  # one hit per product
    semantic = shop.search(
        text="addidas", tenant="acme", mode="semantic", parse=False, group_by_product=True, k=8
    )
    semantic_rank = {hit.product_id: i + 1 for i, hit in enumerate(semantic)}
    lexical_rank = {"SKU-100": 1, "SKU-106": 2}
    for hit in result:
        assert hit.matched_by["semantic"] == semantic_rank[hit.product_id]
        assert hit.matched_by.get("lexical") == lexical_rank.get(hit.product_id)
        expected = 1 / (60 + semantic_rank[hit.product_id])
        if hit.product_id in lexical_rank:
            expected += 1 / (60 + lexical_rank[hit.product_id])
        assert hit.relevance == pytest.approx(expected)
        assert hit.distance is not None and hit.score == pytest.approx(1 - hit.distance)
    relevances = [hit.relevance for hit in result]
    assert relevances == sorted(relevances, reverse=True)
    assert set(ids(result[:2])) == {"SKU-100", "SKU-106"}  # found by both sides


def test_fusion_weights_and_constant_can_be_set(shop: Catalog) -> None:
    lexical_only = shop.search(
        text="addidas", tenant="acme", parse=False, fusion=Fusion(semantic=0.0, lexical=1.0)
    )
    assert set(ids(lexical_only[:2])) == {"SKU-100", "SKU-106"}
    semantic_only = shop.search(
        text="addidas", tenant="acme", parse=False, fusion=Fusion(semantic=1, lexical=0), k=8
    )
    by_distance = sorted(semantic_only, key=lambda hit: hit.distance)
    assert ids(semantic_only) == ids(by_distance)
    hit = shop.search(text="addidas", tenant="acme", parse=False, fusion=Fusion(k=1))[0]
    assert hit.relevance == pytest.approx(sum(1 / (1 + rank) for rank in hit.matched_by.values()))


def test_hybrid_keeps_every_filter_on_both_sides(shop: Catalog) -> None:
    hits = shop.search(text="red bag", tenant="acme", parse=False, price_max=100, k=20, total=True)
    assert set(ids(hits)) == {"SKU-100", "SKU-101", "SKU-104", "SKU-106"}  # every product of at most 100
    assert all(hit.price is not None and hit.price <= 100 for hit in hits)
    assert hits.total == 4
    where = shop.search(text="red", tenant="acme", parse=False, attributes={"colour": "red"}, k=20)
    assert set(ids(where)) == {"SKU-100", "SKU-102", "SKU-104"}


def test_a_catalog_without_product_text_searches_semantically(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add(embedding=np.ones(catalog.dim), tenant="t", product_id="p", category="shoes")
        result = catalog.search(text="red shoes", tenant="t", total=True)
        assert result.mode == "semantic" and result.total == 1
        assert result[0].matched_by == {"semantic": 1} and result[0].relevance is None
        catalog.update_product("p", tenant="t", title="Red shoes", brand="Acme")
        result = catalog.search(text="acme shoes", tenant="t", parse=False)
        assert result.mode == "hybrid"
        assert result[0].matched_by == {"semantic": 1, "lexical": 1}
        assert (result[0].title, result[0].brand) == ("Red shoes", "Acme")
        catalog.update_product("p", tenant="t", title=None, brand=None)
        assert catalog.search(text="red shoes", tenant="t").mode == "semantic"


def test_understood_query_becomes_filters_and_the_rest_is_searched(shop: Catalog) -> None:
    result = shop.search(text="red shoes under $50", tenant="acme", k=20, total=True)
    understood = result.understood
    assert (understood.category, understood.attributes, understood.price_max) == (
        "shoes",
        {"colour": "red"},
        50,
    )
    assert understood.text == "" and not understood.fallback
    assert ids(result) == ["SKU-100"] and result.total == 1
    brand = shop.search(text="patagonia jackets between 100 and 200 EUR", tenant="acme").understood
    assert (brand.brand, brand.category, brand.price_min, brand.price_max) == (
        "Patagonia",
        "jackets",
        100,
        200,
    )
    as_typed = shop.search(text="red shoes under $50", tenant="acme", parse=False, k=20, total=True)
    assert as_typed.understood is None and as_typed.total == len(SHOP)


def test_an_explicit_filter_wins_over_the_words(shop: Catalog) -> None:
    result = shop.search(text="red shoes", tenant="acme", category="bags", k=20)
    assert set(ids(result)) == {"SKU-102"}  # bags, red: the words' category gave way


def test_filters_read_that_match_nothing_fall_back_to_the_query_as_typed(shop: Catalog) -> None:
    result = shop.search(text="red jackets under $10", tenant="acme", k=20, total=True)
    assert result.understood.fallback
    assert result.understood.category == "jackets" and result.understood.price_max == 10
    assert result.total == len(SHOP) and len(result) == len(SHOP)


def test_the_library_counts_only_when_asked(shop: Catalog) -> None:
    assert shop.search(text="shoes", tenant="acme").total is None
    assert shop.search(text="shoes", tenant="acme", total=True, parse=False).total == len(SHOP)
    assert shop.search(text="shoes", tenant="acme", total=True).total == 3  # "shoes" read as the category
    assert shop.search(vector=np.ones(shop.dim), tenant="acme", total=True, category="bags").total == 2


def test_facets_count_the_whole_match_set(shop: Catalog) -> None:
    result = shop.search(text="shoes", tenant="acme", parse=False, facets=True, k=1)
    assert len(result) == 1 and result.total == len(SHOP)
    facets = result.facets
    assert facets.category == dict(Counter(c for *_, c, _, _ in SHOP).most_common())
    assert facets.brand == {"Adidas": 2, "Patagonia": 2, "Gucci": 1, "Nike": 1, "Salomon": 1}
    assert facets.attributes["colour"]["red"] == 3
    assert facets.attributes["size"] == {"42": 2, "44": 1}
    assert sum(bucket.count for bucket in facets.price) == len(SHOP)
    for bucket in facets.price:
        inside = [p for *_, p in SHOP if bucket.low <= Decimal(p) < bucket.high]
        assert bucket.count == len(inside)
    widths = {bucket.high - bucket.low for bucket in facets.price}
    assert len(widths) == 1 and str(widths.pop())[0] in "125"
    lexical = shop.search(text="running", tenant="acme", mode="lexical", parse=False, facets=True)
    assert lexical.total == 3 and lexical.facets.category == {"shoes": 3}
    filtered = shop.search(text="x", tenant="acme", mode="semantic", category="bags", facets=True)
    assert filtered.total == 2 and filtered.facets.brand == {"Adidas": 1, "Gucci": 1}


def test_product_text_is_checked_and_updated(shop: Catalog) -> None:
    with pytest.raises(InvalidInput, match="title is 1001 characters"):
        shop.add(embedding=np.ones(shop.dim), tenant="acme", product_id="x", title="t" * 1001)
    with pytest.raises(InvalidInput, match=r"brand .* control characters"):
        shop.add(embedding=np.ones(shop.dim), tenant="acme", product_id="x", brand="a\nb")
    with pytest.raises(InvalidInput, match="description contains a NUL"):
        shop.add(embedding=np.ones(shop.dim), tenant="acme", product_id="x", description="a\x00")
    with pytest.raises(InvalidInput, match="title must be a string"):
        shop.add(embedding=np.ones(shop.dim), tenant="acme", product_id="x", title=42)  # type: ignore[arg-type]
    with shop.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM imgsearch.products WHERE product_id = 'x'")).scalar() == 0
        )
    assert shop.update_product("SKU-107", tenant="acme", title="Wool winter parka")
    assert ids(shop.search(text="parka", tenant="acme", mode="lexical")) == ["SKU-107"]
    shop.update_product("SKU-107", tenant="acme", title="Wool winter coat")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "x", "mode": "fuzzy"}, "mode must be one of"),
        ({"vector": [1.0] * 32, "mode": "lexical"}, "needs a text query"),
        ({"text": "x", "mode": "hybrid", "diversity": 0.5}, "diversity applies to semantic"),
        ({"text": "x", "facets": "yes"}, "facets must be true or false"),
        ({"text": "x", "parse": 1}, "parse must be true or false"),
        ({"text": "x", "fusion": Fusion(k=0)}, "fusion k must be above 0"),
        ({"text": "x", "fusion": Fusion(semantic=float("nan"))}, "fusion semantic must be a number"),
        ({"text": "x", "fusion": Fusion(semantic=0, lexical=0)}, "can't both be 0"),
        ({"text": "x", "brand": ""}, "brand must not be empty"),
        ({"text": "   "}, "text must be a non-empty string"),
    ],
)
def test_bad_arguments_are_named(shop: Catalog, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        shop.search(tenant="acme", **kwargs)


@pytest.mark.parametrize(
    "query", ["'); DROP TABLE imgsearch.products; --", '"unbalanced', "-", "or or", "a & b | !c", ":* <->"]
)
def test_injection_and_operator_strings_are_just_words(shop: Catalog, query: str) -> None:
    for mode in ("lexical", "hybrid"):
        shop.search(text=query, tenant="acme", mode=mode)
    assert shop.search(text="red", tenant="acme", mode="lexical", parse=False, total=True).total == 3


def test_the_sql_console_fuses_and_counts_as_the_library_does(shop: Catalog) -> None:
    expected = shop.search(text="addidas", tenant="acme", mode="hybrid", parse=False, k=6, facets=True)
    with shop.engine.begin() as conn:  # the library's search put the text's embedding in the shared cache
        rows = conn.execute(
            text("SELECT * FROM imgsearch.search_hybrid('addidas', 6, tenant => 'acme')")
        ).all()
        facets = conn.execute(text("SELECT imgsearch.facets(tenant => 'acme')")).scalar_one()
        words = conn.execute(text("SELECT imgsearch.facets('running', 'acme')")).scalar_one()
        with pytest.raises(Exception, match="k must be from 1 to 1000"):
            conn.execute(text("SELECT * FROM imgsearch.search_hybrid('addidas', 0)"))
    assert [(r.image_id, r.product_id, r.title, r.brand) for r in rows] == [
        (h.image_id, h.product_id, h.title, h.brand) for h in expected
    ]
    assert [r.relevance for r in rows] == pytest.approx([h.relevance for h in expected])
    assert [{"semantic": r.semantic_rank, "lexical": r.lexical_rank} for r in rows] == [
        {"semantic": h.matched_by.get("semantic"), "lexical": h.matched_by.get("lexical")} for h in expected
    ]
    assert facets["total"] == expected.total == len(SHOP)
    assert facets["category"] == expected.facets.category and facets["brand"] == expected.facets.brand
    assert facets["attributes"] == expected.facets.attributes
    assert [(b["from"], b["to"], b["count"]) for b in facets["price"]] == [
        (b.low, b.high, b.count) for b in expected.facets.price
    ]
    assert words["total"] == 3 and words["category"] == {"shoes": 3}
