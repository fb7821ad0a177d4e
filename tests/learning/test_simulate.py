"""The simulator: a shop with hidden grades, shoppers with position bias, and boosts learned from
them that rank closer to what shoppers prefer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgsearch import Catalog
from imgsearch.learning import simulate
from imgsearch.settings import Settings

QUERIES = [f"{colour} {thing}" for colour in ("red", "blue", "green") for thing in ("boots", "bags", "hats")]


def test_boosts_learned_from_simulated_shoppers_rank_closer_to_their_preferences(
    database_url: str, tiny_siglip: Path
) -> None:
    settings = Settings(boost_min_clicks=5, boost_min_conversions=2)
    with Catalog.open(database_url, model=str(tiny_siglip), settings=settings) as catalog:
        shop = simulate.build_shop(catalog, "sim", QUERIES, per_query=20, seed=1)
        assert sorted(shop.grades) == sorted(QUERIES) and abs(shop.weights.sum() - 1) < 1e-9
        assert all(sorted(g.values()).count(3) == 2 for g in shop.grades.values())
        quiet = Catalog.open(database_url, settings=settings.model_copy(update={"record_queries": False}))
        with quiet:
            before = simulate.ndcg(quiet, shop, boost=False)
            events = simulate.run_sessions(catalog, shop, 600, seed=2)
            assert events > 600  # an impression or more a session
            found = catalog.refresh_boosts()
            assert found.query_boosts > 0
            quiet._searcher.router.forget_graphs()
            after = simulate.ndcg(quiet, shop)
            unboosted = simulate.ndcg(quiet, shop, boost=False)
    assert unboosted == before  # the ranking without boosts is the same
    assert after > before + 0.03, (before, after)


def test_shoppers_click_less_further_down() -> None:
    """The cascade model's position bias: the same grade in every place, fewer clicks lower."""
    rng = np.random.default_rng(0)
    clicks = np.zeros(10)
    read = np.zeros(10)
    for _ in range(4000):
        for position, action in simulate.browse([2] * 10, rng):
            (clicks if action == "click" else read)[position - 1] += action in ("click", "impression")
    assert all(clicks[i] > clicks[i + 1] for i in range(9)) and all(read[i] > read[i + 1] for i in range(9))
    # better hits get more clicks at the same place
    good = sum(a == "click" for _ in range(2000) for _, a in simulate.browse([3], rng))
    poor = sum(a == "click" for _ in range(2000) for _, a in simulate.browse([1], rng))
    assert good > 3 * poor
    assert simulate.dcg([3, 2, 0]) > simulate.dcg([0, 2, 3])
