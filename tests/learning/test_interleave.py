"""Team-draft interleaving and judgments from events, end to end on simulated shoppers: boosts
learned from some sessions, then interleaved searches and offline variants that prefer them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput, InvalidQuery
from imgsearch.learning import interleave, judgments, simulate
from imgsearch.learning.boosts import Policy
from imgsearch.records import Hit, SearchResult
from imgsearch.settings import Settings
from tests.helpers import run_cli, searches_recorded
from tests.learning.test_simulate import QUERIES


def _hits(*ids: str) -> SearchResult:
    return SearchResult([Hit(i, p, "t", None, None, 0.1, 0.9) for i, p in enumerate(ids)])


def test_team_draft_alternates_fairly_and_never_repeats_a_product() -> None:
    a, b = _hits("p1", "p2", "p3", "p4", "p5"), _hits("p2", "p6", "p1", "p7", "p8")
    for seed in range(50):
        merged, teams = interleave.team_draft(a, b, 6, seed)
        ids = [hit.product_id for hit in merged]
        assert len(ids) == len(set(ids)) == 6
        for i in range(2, 7, 2):
            assert teams[:i].count("A") == teams[:i].count("B")  # each round: one pick each
        for hit, team in zip(merged, teams, strict=True):  # a team's pick is its best left
            own = [h.product_id for h in (a if team == "A" else b)]
            before = ids[: ids.index(hit.product_id)]
            assert next(p for p in own if p not in before) == hit.product_id
    firsts = {interleave.team_draft(a, b, 6, seed)[1][0] for seed in range(50)}
    assert firsts == {"A", "B"}  # a coin decides who picks first
    page2, teams2 = interleave.team_draft(a, b, 6, 3, skip=4)
    assert len(page2) == 2 and len(teams2) == 2


@pytest.mark.parametrize("value", ["plain", "plain,plain", "plain,best", "a,b,c", 7, None])
def test_interleave_takes_two_different_variants(value: object) -> None:
    with pytest.raises(InvalidQuery, match="interleave takes two different variants"):
        interleave.parse(value)


def test_the_sign_test() -> None:
    even = interleave.Comparison("plain", "boost", 10, 10, 3, 20, 20)
    lopsided = interleave.Comparison("plain", "boost", 2, 18, 0, 5, 40)
    assert even.p_value == pytest.approx(1.0) and lopsided.p_value < 0.001
    assert "boost leads" in lopsided.line()


@pytest.fixture(scope="module")
def learned(server_url: str, template_db: str, tiny_siglip: Path) -> Iterator[tuple[Catalog, simulate.Shop, str]]:
    """A simulated shop whose boosts were learned from 600 sessions."""
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    settings = Settings(model=str(tiny_siglip), boost_min_clicks=5, boost_min_conversions=2)
    with Catalog.open(url, settings=settings) as catalog:
        shop = simulate.build_shop(catalog, "sim", QUERIES, per_query=20, seed=1)
        simulate.run_sessions(catalog, shop, 600, seed=2)
        assert catalog.refresh_boosts().query_boosts > 0
        yield catalog, shop, url


def test_shoppers_clicks_prefer_the_boosted_variant_when_interleaved(
    learned: tuple[Catalog, simulate.Shop, str],
) -> None:
    catalog, shop, url = learned
    result = catalog.search(text=QUERIES[0], tenant="sim", k=10, interleave="plain,boost", parse=False)
    assert searches_recorded(catalog.engine, [result.query_id]) == 1
    with catalog.engine.connect() as conn:
        recorded = conn.execute(
            text("SELECT query_attributes->'interleave' FROM imgsearch.search_queries WHERE query_id = CAST(:q AS uuid)"),
            {"q": result.query_id},
        ).scalar_one()
    assert recorded["variants"] == ["plain", "boost"] and len(recorded["teams"]) == len(result) == 10
    assert set(recorded["teams"]) == {"A", "B"}
    simulate.run_sessions(catalog, shop, 400, seed=3, interleave="plain,boost")
    [found] = interleave.report(catalog.engine, "sim")
    assert (found.a, found.b) == ("plain", "boost")
    assert found.wins_b > found.wins_a and found.p_value < 0.05, found
    shown = run_cli("interleave", "report", "--tenant", "sim", IMGSEARCH_DATABASE_URL=url)
    assert shown.returncode == 0 and shown.stdout.startswith("plain vs boost: ") and "boost leads" in shown.stdout


def test_judgments_from_events_rank_the_variants(learned: tuple[Catalog, simulate.Shop, str]) -> None:
    catalog, shop, url = learned
    simulate.run_sessions(catalog, shop, 300, seed=4)  # after the refresh: events the boosts never saw
    judged = judgments.from_events(catalog.engine, "sim", Policy())
    assert judged.queries and all(grades for _, grades in judged.queries)
    assert {query for query, _ in judged.queries} <= set(QUERIES)
    # the judgments agree with the shoppers' hidden grades: the higher judged, the better truly
    hidden: dict[float, list[int]] = {}
    for query, grades in judged.queries:
        for product_id, grade in grades.items():
            hidden.setdefault(grade, []).append(shop.grades[query].get(product_id, 0))
    overall = np.mean([g for grades in shop.grades.values() for g in grades.values()])
    levels = sorted(hidden)
    assert len(levels) >= 2 and np.mean(hidden[levels[-1]]) > np.mean(hidden[levels[0]])
    # and what they judge at all is better than the shop's average (the lowest level alone holds
    # ~10 products: over seeds 4-15 its mean ran 1.09-1.80 against 1.00, and one CI run met 1.00)
    assert np.mean([g for truly in hidden.values() for g in truly]) > overall
    found = judgments.compare(catalog, "sim", judged, k=10)
    assert all(0 <= found[v]["ndcg"] <= 1 and found[v]["queries"] == len(judged.queries) for v in found)
    assert found["both"] == found["boost"] and found["adapter"] == found["plain"]  # no adapter is active
    with pytest.raises(InvalidInput, match="variants are"):
        judgments.compare(catalog, "sim", judged, variants=["best"])
    shown = run_cli("eval", "--judgments", "events", "--tenant", "sim", "--variants", "plain,boost",
                    IMGSEARCH_DATABASE_URL=url)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith("| variant | queries | nDCG@10")
    assert [line.split("|")[1].strip() for line in shown.stdout.splitlines()[2:]] == ["plain", "boost"]
    assert np.isfinite(found["boost"]["rr"])
