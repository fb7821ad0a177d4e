"""The boosts job: clicks against the clicks expected at their positions (COEC), smoothed, with a
minimum of evidence; per query and per product; what searches then do with them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput
from imgsearch.learning import boosts
from imgsearch.learning.boosts import Policy, refresh
from tests.learning.conftest import QUERY, graded, open_shop

SETTINGS: dict[str, Any] = {"boost_min_clicks": 5, "boost_min_conversions": 2}


@pytest.fixture(scope="module")
def learned(shop_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    """40 searches for "red shoes" and 40 for something else, with their shoppers' events."""
    with open_shop(shop_url, str(tiny_siglip), **SETTINGS) as catalog:
        events: list[dict[str, Any]] = []

        def act(result: Any, position: int, action: str = "click") -> None:
            hit = result[position - 1]
            events.append({"query_id": result.query_id, "action": action, "object_id": hit.product_id,
                           "position": position})  # fmt: skip

        for i in range(40):
            result = catalog.search(text=QUERY, tenant="acme", k=10, mode="semantic", boost=False)
            if i % 2 == 0:
                act(result, 1)  # p00 at position 1: half the searches, as position 1 gets everywhere
            if i < 30:
                act(result, 8)  # p07: clicked far more than position 8 predicts
            if i < 2:
                act(result, 6)
                act(result, 6, "purchase")  # p05: two conversions
            if 2 <= i < 5:
                act(result, 4)  # p03: three clicks, under the minimum
            act(result, 8, "impression")  # impressions don't count as engagement
        for i in range(40):
            other = catalog.search(similar_to_product="p30", tenant="acme", k=10, boost=False)
            if i % 2 == 0:
                act(other, 1)
        catalog.record_events("acme", events)
        yield catalog


def _boosts(catalog: Catalog) -> dict[tuple[str, str], Any]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM imgsearch.boosts WHERE tenant = 'acme'")).all()
    return {(row.product_id, row.query_norm): row for row in rows}


def examined(position: int) -> float:
    """The prior's examination curve: DCG's discount."""
    return 1 / math.log2(position + 1)


def position_rate(clicks: int, impressions: int, position: int, prior: float = 100.0) -> float:
    """A position's clicks per impression in the fixture's shop, as the job computes it: 80
    searches of 10 hits, 75 clicks; the examination curve worth ``prior`` impressions."""
    shop_rate = 75 / 800
    mean_examined = sum(examined(p) for p in range(1, 11)) / 10
    return (clicks + prior * shop_rate * examined(position) / mean_examined) / (impressions + prior)


def test_clicks_beyond_what_their_position_predicts_earn_a_boost(learned: Catalog) -> None:
    done = learned.refresh_boosts()
    assert done.tenants == 1 and done.query_boosts >= 2 and done.product_boosts >= 1
    boosts = _boosts(learned)
    p07 = boosts[("p07", "red shoes")]
    # position 8: 30 clicks in 80 impressions, moved toward the curve by its 100 impressions'
    # worth; p07 had 40 of them (+ the conversions' share of the expectation: 2 conversions per
    # 75 clicks, weight 3)
    expected = 40 * position_rate(30, 80, 8) * (1 + 3 * 2 / 75)
    assert p07.clicks == 30 and p07.expected == pytest.approx(expected)
    assert p07.boost == pytest.approx(math.log((30 + 5) / (expected + 5)) / math.log(4), rel=1e-5)
    # p00 was clicked as often as the shop's first hits are (20 of its 40 searches): a boost far
    # below p07's, from the curve alone (which puts fewer clicks at position 1 than this shop has)
    p00 = boosts.get(("p00", "red shoes"))
    assert p00 is None or p00.boost < p07.boost / 2
    # with no prior, the shop's own rates: as the job did before the curve
    plain = refresh(learned.engine, Policy(min_clicks=5, min_conversions=2, position_prior=0))
    assert plain.query_boosts >= 2
    unsmoothed = _boosts(learned)
    assert unsmoothed[("p07", "red shoes")].expected == pytest.approx(40 * (30 / 80) * (1 + 3 * 2 / 75))
    assert ("p00", "red shoes") not in unsmoothed
    learned.refresh_boosts()
    # p05: two clicks, but two purchases meet the conversions' minimum
    p05 = boosts[("p05", "red shoes")]
    assert (p05.clicks, p05.conversions) == (2, 2) and p05.boost > 0
    # p03: three clicks, under the minimum of five
    assert ("p03", "red shoes") not in boosts
    # the product's own boost across queries
    assert boosts[("p07", "")].boost > 0


def test_searches_blend_the_learned_boosts(learned: Catalog) -> None:
    learned.refresh_boosts()
    boosts = _boosts(learned)

    def boost(product_id: str) -> float:  # the query's own, else half the product's
        if (product_id, "red shoes") in boosts:
            return float(boosts[(product_id, "red shoes")].boost)
        return 0.5 * float(boosts[(product_id, "")].boost) if (product_id, "") in boosts else 0.0

    # the default lift: 10 places; every candidate a boost could bring onto the page
    keyed = [(place - 10 * boost(f"p{place - 1:02d}"), -boost(f"p{place - 1:02d}"), place) for place in range(1, 21)]
    expected = [f"p{place - 1:02d}" for *_, place in sorted(keyed)][:10]
    result = learned.search(text=QUERY, tenant="acme", k=10, mode="semantic")
    assert [hit.product_id for hit in result] == expected
    assert expected.index("p07") < 7 and expected.index("p05") < 5
    assert [hit.boost for hit in result] == [pytest.approx(boost(p)) for p in expected]


def test_a_minimum_of_evidence_keeps_thin_data_out(learned: Catalog) -> None:
    strict = Policy(min_clicks=1000, min_conversions=1000)
    found = refresh(learned.engine, strict)
    assert (found.query_boosts, found.product_boosts) == (0, 0)
    assert _boosts(learned) == {}
    learned._searcher.router.forget_graphs()
    result = learned.search(text=QUERY, tenant="acme", k=10, mode="semantic")
    assert [hit.product_id for hit in result] == [f"p{i:02d}" for i in range(10)]
    assert {hit.boost for hit in result} == {None}  # nothing to blend: the plain statement


def test_a_tenants_refresh_leaves_the_others_boosts(learned: Catalog) -> None:
    learned.refresh_boosts()
    with learned.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, "
                "conversions, expected) SELECT id, '', tenant, product_id, 0.5, 9, 0, 1 FROM imgsearch.products "
                "WHERE tenant = 'globex' AND product_id = 'g1'"
            )
        )
    learned.refresh_boosts(tenant="acme")
    with learned.engine.connect() as conn:
        tenants = set(conn.execute(text("SELECT tenant FROM imgsearch.boosts")).scalars())
    assert tenants == {"acme", "globex"}
    learned.refresh_boosts()  # every tenant: globex has no feedback, so no boosts
    with learned.engine.connect() as conn:
        assert set(conn.execute(text("SELECT tenant FROM imgsearch.boosts")).scalars()) == {"acme"}


def test_a_deleted_product_takes_its_boosts(learned: Catalog) -> None:
    learned.refresh_boosts()
    assert ("p05", "red shoes") in _boosts(learned)
    learned.delete_product("p05", tenant="acme")
    assert not [key for key in _boosts(learned) if key[0] == "p05"]
    learned.refresh_boosts()  # its events stay in the log, pointing at no product: ignored
    assert not [key for key in _boosts(learned) if key[0] == "p05"]


@pytest.mark.parametrize(
    "policy, message",
    [
        (Policy(window_days=0), "window_days"),
        (Policy(full_ratio=1.0), "full_ratio"),
        (Policy(prior=0), "prior"),
        (Policy(min_clicks=-1), "min_clicks"),
        (Policy(position_prior=-1), "position_prior"),
        (Policy(position_prior=float("nan")), "position_prior"),
    ],
)
def test_a_bad_policy_is_refused(learned: Catalog, policy: Policy, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        refresh(learned.engine, policy)


def test_a_bad_tenant_name_is_refused(learned: Catalog) -> None:
    with pytest.raises(InvalidInput, match="tenant"):
        learned.refresh_boosts(tenant="'; DROP TABLE imgsearch.boosts; --\x00")


def test_a_small_shop_lifts_the_hit_its_shoppers_pick(shop_url: str, tiny_siglip: Path) -> None:
    """One query, and its shoppers click the 8th hit of every search (and buy it 6 times): the
    shop's own click rate at position 8 is then 1, which alone would explain every click; the
    examination curve says position 8 draws far fewer, so the product is lifted."""
    with open_shop(shop_url, str(tiny_siglip), **SETTINGS) as catalog:
        q = np.asarray(catalog.embedder.embed_text("summer dress"), dtype=np.float32).reshape(-1)
        catalog.add_many(
            {"tenant": "solo", "product_id": f"d{i:02d}", "category": "dresses", "embedding": v}
            for i, v in enumerate(graded(q, 12, seed=4))
        )
        first = catalog.search(text="Summer dress", tenant="solo", k=10, mode="semantic", boost=False)
        picked = first[7].product_id
        events: list[dict[str, Any]] = []
        for i in range(60):
            result = catalog.search(text="summer dress", tenant="solo", k=10, mode="semantic", boost=False)
            assert result[7].product_id == picked
            events.append({"query_id": result.query_id, "action": "click", "object_id": picked, "position": 8})
            if i % 10 == 0:
                events.append({"query_id": result.query_id, "action": "purchase", "object_id": picked, "position": 8})
        catalog.record_events("solo", events)

        def place() -> int:
            catalog._searcher.router.forget_graphs()
            hits = catalog.search(text="summer dress", tenant="solo", k=10, mode="semantic")
            return [hit.product_id for hit in hits].index(picked) + 1

        refresh(catalog.engine, Policy(min_clicks=5, min_conversions=2, position_prior=0), tenant="solo")
        assert place() == 8  # the shop's own rates alone: its clicks are all "position bias"
        catalog.refresh_boosts(tenant="solo")
        assert place() < 8


EVERY_IMPRESSION = "    JOIN evidenced v ON v.tenant = s.tenant AND v.product_pk = s.product_pk\n"


@pytest.mark.parametrize(("min_clicks", "min_conversions"), [(0, 0), (1, 1), (5, 2), (20, 3)])
def test_scores_sum_only_the_scored_products_impressions_and_come_out_as_over_every_impression(
    learned: Catalog, min_clicks: int, min_conversions: int
) -> None:
    """``expected`` sums the impressions of products with a pair engaged enough to be scored
    only: every pair scored, its engagement, expected clicks and ratio, are those of summing
    every impression, at any minimum of evidence."""
    assert EVERY_IMPRESSION in boosts.SCORED
    values = {
        "since": dt.datetime.now(dt.UTC) - dt.timedelta(days=30), "tenant": "acme", "prior": 5.0,
        "conversion_weight": 3.0, "position_prior": 100.0, "min_clicks": min_clicks, "min_conversions": min_conversions,
    }  # fmt: skip
    scored = " SELECT tenant, query_norm, product_pk, clicks, conversions, expected, ratio FROM scored ORDER BY 1, 2, 3"
    with learned.engine.connect() as conn:
        kept = conn.execute(text(boosts.SCORED + scored), values).all()
        every = conn.execute(text(boosts.SCORED.replace(EVERY_IMPRESSION, "") + scored), values).all()
    assert kept and len(kept) == len(every)
    for a, b in zip(kept, every, strict=True):
        assert a[:5] == b[:5] and math.isclose(a.expected, b.expected) and math.isclose(a.ratio, b.ratio)
