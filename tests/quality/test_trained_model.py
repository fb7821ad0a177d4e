"""Search quality judged with a model that learned something: the small SigLIP trained here on
drawn products (imgsearch/samples/small_model.py), on 400 new drawings it never saw. The same
shop under the same model with random weights is the control: what the figures owe to the model.

A drawing's right answers are the other drawings of its look (kind, colour and pattern); a
query's score is the share of its top 10 that are right, out of at most the look's drawings."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.quality.evaluation import LabelledSet, Query, evaluate
from imgsearch.samples import dataset

SHOP = 400


@pytest.fixture(scope="module")
def drawings() -> list[dataset.Drawn]:
    return dataset.draw(SHOP, seed=99, size=64)


def _shop(url: str, model: Path, drawings: list[dataset.Drawn]) -> Catalog:
    rng = random.Random(5)
    rows = [{"tenant": "acme", **dataset.product_row(item, i, rng)} for i, item in enumerate(drawings)]
    catalog = Catalog.open(url, model=str(model))
    vectors = catalog.embedder.embed_images([r["image"] for r in rows])  # type: ignore[misc]
    catalog.add_many([{**row, "embedding": np.asarray(v)} for row, v in zip(rows, vectors, strict=True)])
    return catalog


@pytest.fixture(scope="module")
def trained_shop(server_url: str, template_db: str, trained_small: Path, drawings: list[dataset.Drawn]) -> Iterator[Catalog]:
    from tests.conftest import new_database

    with _shop(new_database(server_url, template_db), trained_small, drawings) as catalog:
        yield catalog


@pytest.fixture(scope="module")
def random_shop(server_url: str, template_db: str, untrained_small: Path, drawings: list[dataset.Drawn]) -> Iterator[Catalog]:
    from tests.conftest import new_database

    with _shop(new_database(server_url, template_db), untrained_small, drawings) as catalog:
        yield catalog


def _score(catalog: Catalog, drawings: list[dataset.Drawn], look: str, **search: object) -> float:
    looks = {f"p{i}": item.look for i, item in enumerate(drawings)}
    hits = catalog.search(tenant="acme", k=10, **search)  # type: ignore[arg-type]
    return sum(looks[h.product_id] == look for h in hits) / min(10, list(looks.values()).count(look))


def _captions(drawings: list[dataset.Drawn]) -> list[dataset.Drawn]:
    return list({item.caption: item for item in drawings}.values())[:40]


def _text_score(catalog: Catalog, drawings: list[dataset.Drawn], mode: str) -> float:
    return float(np.mean([
        _score(catalog, drawings, item.look, text=item.caption, mode=mode, parse=False) for item in _captions(drawings)
    ]))  # fmt: skip


def _image_score(catalog: Catalog, drawings: list[dataset.Drawn]) -> float:
    queries = [q for q in dataset.draw(40, seed=1234, size=64) if any(d.look == q.look for d in drawings)]
    return float(np.mean([_score(catalog, drawings, q.look, image=q.png) for q in queries]))


def test_text_to_image_finds_the_look_a_caption_names(
    trained_shop: Catalog, random_shop: Catalog, drawings: list[dataset.Drawn]
) -> None:
    trained, control = _text_score(trained_shop, drawings, "semantic"), _text_score(random_shop, drawings, "semantic")
    assert trained >= 0.8 and control <= 0.3, (trained, control)  # measured 0.93 against 0.01


def test_hybrid_search_is_at_least_as_good_as_the_semantic_side(
    trained_shop: Catalog, drawings: list[dataset.Drawn]
) -> None:
    hybrid = _text_score(trained_shop, drawings, "hybrid")
    assert hybrid >= 0.9 and hybrid >= _text_score(trained_shop, drawings, "semantic"), hybrid  # measured 1.0


def test_image_to_image_finds_other_drawings_of_the_look(
    trained_shop: Catalog, random_shop: Catalog, drawings: list[dataset.Drawn]
) -> None:
    trained, control = _image_score(trained_shop, drawings), _image_score(random_shop, drawings)
    assert trained >= 0.75 and trained > control + 0.2, (trained, control)  # measured 0.90 against 0.37


def test_eval_reports_the_trained_models_quality_and_the_index_loses_nothing(
    trained_shop: Catalog, drawings: list[dataset.Drawn]
) -> None:
    by_look: dict[str, list[str]] = {}
    for i, item in enumerate(drawings):
        by_look.setdefault(item.look, []).append(f"p{i}")
    queries = [
        Query(id=item.caption, relevant=dict.fromkeys(by_look[item.look], 1.0), text=item.caption, tenant="acme")
        for item in _captions(drawings)
    ]
    report = evaluate(trained_shop, LabelledSet(queries, "product"), k=10)
    assert report.summary["ann"]["ndcg"] >= 0.8 and report.ann_recall >= 0.99, report.summary
