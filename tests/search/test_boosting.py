"""Learned boosts blended into the ranking inside the search's statement: bounded lifts, the whole
candidate set, off per request, every strategy and mode, and a clean fallback without boosts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidQuery
from tests.helpers import searches_recorded
from tests.learning.conftest import QUERY, open_shop, query_vector
from tests.learning.conftest import shop_url as shop_url


def _set_boosts(catalog: Catalog, boosts: dict[tuple[str, str], float], tenant: str = "acme") -> None:
    """Boost rows as the job writes them: ``{(product_id, query_norm): boost}``."""
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM imgsearch.boosts"))
        for (product_id, query_norm), boost in boosts.items():
            conn.execute(
                text(
                    "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, "
                    "conversions, expected) SELECT id, :q, tenant, product_id, :b, 50, 0, 10 "
                    "FROM imgsearch.products WHERE tenant = :t AND product_id = :p"
                ),
                {"q": query_norm, "t": tenant, "p": product_id, "b": boost},
            )
    catalog._searcher.router.forget_graphs()


@pytest.fixture
def boosted(shop_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    with open_shop(shop_url, str(tiny_siglip), boost_max_lift=3) as catalog:
        yield catalog
        _set_boosts(catalog, {})


def _ids(result: list) -> list[str]:  # type: ignore[type-arg]
    return [hit.product_id for hit in result]


PLAIN = [f"p{i:02d}" for i in range(40)]  # the order without boosts


def test_without_boosts_the_order_is_the_plain_one(boosted: Catalog) -> None:
    result = boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic")
    assert _ids(result) == PLAIN[:10]
    assert {hit.boost for hit in result} == {None}


def test_a_full_boost_lifts_a_hit_exactly_lift_places_and_no_more(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p07", "red shoes"): 1.0, ("p09", "red shoes"): 0.5})
    result = boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic")
    ids = _ids(result)
    assert ids.index("p07") == 7 - 3  # lift 3
    assert ids.index("p09") == 9 - 1  # half a boost: 1.5 places, so past one hit
    assert [hit.boost for hit in result if hit.product_id == "p07"] == [pytest.approx(1.0)]
    assert {hit.boost for hit in result if hit.product_id not in ("p07", "p09")} == {0.0}
    # the others keep their order
    assert [i for i in ids if i not in ("p07", "p09")] == [i for i in PLAIN[:10] if i not in ("p07", "p09")]


def test_a_hit_below_the_page_reaches_it(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p12", "red shoes"): 1.0, ("p13", "red shoes"): 1.0})
    ids = _ids(boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic"))
    assert ids[-1] == "p12" and "p13" not in ids  # place 13 -> 10; place 14 -> 11, off the page
    page2 = _ids(boosted.search(text=QUERY, tenant="acme", k=10, offset=10, mode="semantic"))
    assert page2[:3] == ["p09", "p13", "p10"] and "p12" not in page2  # pages follow one order


def test_boosts_can_be_switched_off_per_request(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p07", "red shoes"): 1.0})
    result = boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic", boost=False)
    assert _ids(result) == PLAIN[:10] and {hit.boost for hit in result} == {None}
    with pytest.raises(InvalidQuery, match="boost must be true or false"):
        boosted.search(text=QUERY, tenant="acme", boost="yes")  # type: ignore[arg-type]


def test_a_query_without_its_own_boosts_uses_the_products_at_a_weight(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p06", ""): 1.0, ("p08", "blue bags"): 1.0})
    ids = _ids(boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic"))
    assert ids.index("p06") == 6 - 1  # 0.5 x 3 places: past one
    assert ids.index("p08") == 8  # another query's boost: nothing
    # a search without text (an image's, a vector's): the products' boosts only
    by_vector = _ids(boosted.search(vector=query_vector(boosted), tenant="acme", k=10))
    assert by_vector.index("p06") == 5


def test_boosts_stay_in_their_tenant(boosted: Catalog) -> None:
    _set_boosts(boosted, {("g3", "red shoes"): 1.0}, tenant="globex")
    result = boosted.search(text=QUERY, tenant="acme", k=10, mode="semantic")
    assert _ids(result) == PLAIN[:10] and {hit.boost for hit in result} == {None}  # acme has none
    theirs = _ids(boosted.search(text=QUERY, tenant="globex", k=5, mode="semantic"))
    assert theirs.index("g3") == 0  # place 4 -> 1


@pytest.mark.parametrize(
    "filters",
    [
        {"price_max": 100},  # the filtered statement, one HNSW pass
        {"price_min": 30, "price_max": 40},  # few rows: the exact scan
        {"category": ["footwear", "bags"]},  # a list
        {"attributes": {}},  # products joined
    ],
)
def test_every_strategy_blends_them(boosted: Catalog, filters: dict) -> None:  # type: ignore[type-arg]
    _set_boosts(boosted, {("p25", "red shoes"): 1.0})
    plain = _ids(boosted.search(text=QUERY, tenant="acme", k=5, mode="semantic", boost=False, **filters))
    result = boosted.search(text=QUERY, tenant="acme", k=5, mode="semantic", **filters)
    place = PLAIN.index("p25") - (PLAIN.index(plain[0]))  # its place under the filters, from 0
    expected = [p for p in plain if p != "p25"]
    if place - 3 < 5:
        expected.insert(max(0, place - 3), "p25")
    assert _ids(result) == expected[:5]


def test_per_product_groups_and_expansion_follow_the_boosted_order(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p04", "red shoes"): 1.0})
    grouped = _ids(boosted.search(text=QUERY, tenant="acme", k=5, mode="semantic", group_by_product=True))
    assert grouped == ["p00", "p04", "p01", "p02", "p03"]
    expanded = boosted.search(text=QUERY, tenant="acme", k=5, mode="semantic", expand=2)
    assert "p04" in _ids(expanded) and expanded[0].boost is not None
    # diversity re-ranks by MMR: no boosts
    diverse = boosted.search(text=QUERY, tenant="acme", k=5, mode="semantic", diversity=0.5)
    assert {hit.boost for hit in diverse} == {None}


def test_lexical_and_hybrid_searches_blend_them_in_their_fusion(boosted: Catalog) -> None:
    plain = _ids(boosted.search(text="shoe", tenant="acme", k=10, mode="lexical", boost=False))
    _set_boosts(boosted, {(plain[8], "shoe"): 1.0, (plain[20 if len(plain) > 20 else 9], "shoe"): 0.0001})
    lexical = boosted.search(text="shoe", tenant="acme", k=10, mode="lexical")
    assert _ids(lexical).index(plain[8]) == 5 and lexical[5].boost == pytest.approx(1.0)
    hybrid_plain = _ids(boosted.search(text="shoe", tenant="acme", k=10, mode="hybrid", boost=False))
    _set_boosts(boosted, {(hybrid_plain[9], "shoe"): 1.0})
    hybrid = boosted.search(text="shoe", tenant="acme", k=10, mode="hybrid")
    assert _ids(hybrid).index(hybrid_plain[9]) == 6
    assert [i for i in _ids(hybrid) if i != hybrid_plain[9]] == [i for i in hybrid_plain if i != hybrid_plain[9]]


def test_a_recorded_search_says_whether_it_was_boosted(boosted: Catalog) -> None:
    _set_boosts(boosted, {("p07", "red shoes"): 1.0})
    on = boosted.search(text=QUERY, tenant="acme", k=3, mode="semantic")
    off = boosted.search(text=QUERY, tenant="acme", k=3, mode="semantic", boost=False)
    assert searches_recorded(boosted.engine, [on.query_id, off.query_id]) == 2
    with boosted.engine.connect() as conn:
        flags = dict(
            conn.execute(
                text("SELECT query_id::text, query_attributes->>'boost' FROM imgsearch.search_queries "
                     "WHERE query_id::text IN (:a, :b)"),
                {"a": on.query_id, "b": off.query_id},
            ).all()
        )  # fmt: skip
    assert flags == {on.query_id: "true", off.query_id: "false"}
