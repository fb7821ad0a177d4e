"""Learning from shoppers with a model that learned something: the small SigLIP trained here on
drawn products (imgsearch/samples/small_model.py). Boosts find which of the right-looking products
shoppers prefer, a preference no image shows; the query adapter trained on the shop's titles is
activated only when it wins, so text search never gets worse for it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.errors import InvalidInput
from imgsearch.learning import adapter, simulate, tuning
from imgsearch.samples import dataset
from imgsearch.settings import Settings


@pytest.fixture
def drawn(server_url: str, template_db: str, trained_small: Path) -> Iterator[tuple[str, list[dataset.Drawn]]]:
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    items = dataset.draw(400, seed=99, size=64)
    rng = random.Random(5)
    rows = [{"tenant": "acme", **dataset.product_row(item, i, rng)} for i, item in enumerate(items)]
    with Catalog.open(url, model=str(trained_small)) as catalog:
        vectors = catalog.embedder.embed_images([r["image"] for r in rows])  # type: ignore[misc]
        catalog.add_many([{**row, "embedding": np.asarray(v)} for row, v in zip(rows, vectors, strict=True)])
    yield url, items


def _captions(items: list[dataset.Drawn], least: int) -> list[str]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.caption] = counts.get(item.caption, 0) + 1
    return [caption for caption, n in counts.items() if n >= least][:15]


def test_boosts_learn_which_right_looking_products_shoppers_prefer(
    drawn: tuple[str, list[dataset.Drawn]], trained_small: Path
) -> None:
    url, items = drawn
    captions = _captions(items, 4)
    assert len(captions) >= 10
    # the right look: grade 3 for a third of its products (what shoppers like and no image shows), 1 else
    grades = {c: {f"p{i}": 3 if i % 3 == 0 else 1 for i, item in enumerate(items) if item.caption == c} for c in captions}
    ranks = np.arange(1, len(captions) + 1, dtype=np.float64)
    shop = simulate.Shop("acme", captions, (1 / ranks) / (1 / ranks).sum(), grades)
    settings = Settings(model=str(trained_small), boost_min_clicks=5, boost_min_conversions=2)
    quiet = settings.model_copy(update={"record_queries": False})
    with Catalog.open(url, settings=settings) as catalog, Catalog.open(url, settings=quiet) as judge:
        before = simulate.ndcg(judge, shop, boost=False)
        simulate.run_sessions(catalog, shop, 900, seed=2)
        assert catalog.refresh_boosts(tenant="acme").query_boosts > 0
        judge._searcher.router.forget_graphs()
        after = simulate.ndcg(judge, shop)
    assert before > 0.5  # the model finds the look; the order within it is what boosts can add
    assert after > before + 0.03, (before, after)  # measured 0.73 -> 0.91


def _precision(catalog: Catalog, items: list[dataset.Drawn], captions: list[str]) -> float:
    looks = {f"p{i}": item.caption for i, item in enumerate(items)}
    found = []
    for caption in captions:
        hits = catalog.search(text=caption, tenant="acme", k=4, mode="semantic", parse=False)
        found.append(sum(looks[h.product_id] == caption for h in hits) / 4)
    return float(np.mean(found))


def test_the_query_adapter_is_used_only_when_it_helps_text_search(
    drawn: tuple[str, list[dataset.Drawn]], trained_small: Path
) -> None:
    url, items = drawn
    captions = _captions(items, 4)
    looks = _captions(items, 2)  # what shoppers type, clicking the products of the look they asked for
    grades = {c: {f"p{i}": 3 for i, item in enumerate(items) if item.caption == c} for c in looks}
    shop = simulate.Shop("acme", looks, np.full(len(looks), 1 / len(looks)), grades)
    with Catalog.open(url, model=str(trained_small)) as catalog:
        before = _precision(catalog, items, captions)
        simulate.run_sessions(catalog, shop, 600, seed=3)
        model = catalog.registered_model()
        pairs = tuning.gather(catalog.engine, model, "acme", catalog.embedder.embed_texts)
        assert pairs.sources["events"] > 0 and pairs.sources["titles"] == len(items)
        assert pairs.judged is not None and sum(pairs.judged) == pairs.sources["events"]
        trained = adapter.train(pairs.queries, pairs.targets, pairs.products, pairs.groups, judged=pairs.judged)
        titles_only = adapter.train(pairs.queries, pairs.targets, pairs.products, pairs.groups)
        info = tuning.store(catalog.engine, "acme", model, trained)
        if trained.wins:
            tuning.activate(catalog.engine, "acme", model, info.id)
        else:
            with pytest.raises(InvalidInput, match=r"didn.t beat the identity"):
                tuning.activate(catalog.engine, "acme", model, info.id)
        catalog._searcher.adapters.forget()
        after = _precision(catalog, items, captions)
    assert before >= 0.7, before  # measured 0.87 (top 4 of looks with 4 drawings or more): it reads them
    assert after >= before - 0.02, (before, after, trained.wins)
    # judged on every held-out pair, titles weigh most ("red mug": the model learned "a red mug"):
    # the map that learns them wins there (measured MRR 0.37 -> 0.42) while shoppers' own words
    # lose (0.87 -> 0.83 above): judged on what shoppers typed, it is never activated for that
    assert titles_only.adapter.mrr > titles_only.identity.mrr, titles_only.metrics()
