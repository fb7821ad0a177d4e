"""A tenant's query adapter: trained on its pairs (titles, events, a pairs file), stored as
versions, activated only when it beats the identity, used by text searches in the library and in
SQL, rolled back; and ``imgsearch tune`` as a subprocess."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.learning import adapter, tuning
from tests.helpers import run_cli

PRODUCTS = 300


def texts() -> list[str]:
    words = ["red", "blue", "green", "wool", "silk", "linen", "boot", "bag", "hat", "coat", "scarf", "belt"]
    rng = np.random.default_rng(3)
    found: list[str] = []
    while len(found) < PRODUCTS:
        phrase = " ".join(rng.choice(words, 3))
        if phrase not in found:
            found.append(phrase)
    return found


@pytest.fixture(scope="module")
def shop(server_url: str, template_db: str, tiny_siglip: Path) -> Iterator[tuple[Catalog, list[str]]]:
    """Products titled by a phrase whose image embedding is the phrase's text embedding through a
    fixed distortion: the search by text finds them less often than an adapter could."""
    from tests.conftest import new_database

    url = new_database(server_url, template_db)
    with Catalog.open(url, model=str(tiny_siglip)) as catalog:
        phrases = texts()
        vectors = np.asarray(catalog.embedder.embed_texts(phrases), dtype=np.float32)
        rng = np.random.default_rng(0)
        distortion = np.eye(catalog.dim) + 0.9 * rng.standard_normal((catalog.dim, catalog.dim)) / np.sqrt(catalog.dim)
        images = vectors @ distortion.T + 0.05 * rng.standard_normal(vectors.shape)
        catalog.add_many(
            [{"tenant": "acme", "product_id": f"sku-{i}", "title": phrase, "embedding": image}
             for i, (phrase, image) in enumerate(zip(phrases, images, strict=True))]
        )  # fmt: skip
        yield catalog, phrases


def _top1(catalog: Catalog, phrases: list[str], **search: Any) -> float:
    found = [
        catalog.search(text=p, tenant="acme", k=1, mode="semantic", parse=False, **search)[0].product_id == f"sku-{i}"
        for i, p in enumerate(phrases[:100])
    ]
    return float(np.mean(found))


def test_an_adapter_that_beats_the_identity_is_stored_activated_and_used(shop: tuple[Catalog, list[str]]) -> None:
    catalog, phrases = shop
    model = catalog.registered_model()
    pairs = tuning.gather(catalog.engine, model, "acme", catalog.embedder.embed_texts)
    assert pairs.sources == {"events": 0, "titles": PRODUCTS, "file": 0}
    assert pairs.queries.shape == (PRODUCTS, catalog.dim) and len(pairs.product_ids) == PRODUCTS
    trained = adapter.train(pairs.queries, pairs.targets, pairs.products, pairs.groups)
    assert trained.wins and trained.adapter.top1 > trained.identity.top1
    info = tuning.store(catalog.engine, "acme", model, trained)
    assert (info.version, info.active) == (1, False)
    before = _top1(catalog, phrases)
    tuning.activate(catalog.engine, "acme", model, info.id)
    catalog._searcher.adapters.forget()
    after = _top1(catalog, phrases)
    assert after > before
    assert _top1(catalog, phrases, adapter=False) == before  # off for one search
    # a vector query uses it only when asked
    vector = catalog.embedder.embed_text(phrases[0])
    plain = catalog.search(vector=vector, tenant="acme", k=5)
    mapped = catalog.search(vector=vector, tenant="acme", k=5, adapter=True)
    assert [h.product_id for h in plain] == [h.product_id for h in catalog.search(text=phrases[0], tenant="acme", k=5,
                                                                                 mode="semantic", parse=False,
                                                                                 adapter=False)]  # fmt: skip
    assert [h.product_id for h in mapped] == [h.product_id for h in catalog.search(text=phrases[0], tenant="acme", k=5,
                                                                                  mode="semantic", parse=False)]  # fmt: skip
    # SQL's search_text maps the text's embedding (cached by the searches above) the same way
    with catalog.engine.begin() as conn:
        for i, phrase in enumerate(phrases[:20]):
            row = conn.execute(
                text("SELECT product_id FROM imgsearch.search_text(:q, 1, tenant => 'acme')"), {"q": phrase}
            ).scalar_one()
            library = catalog.search(text=phrase, tenant="acme", k=1, mode="semantic", parse=False)[0].product_id
            assert row == library, i
    # another tenant's searches don't use it
    with pytest.raises(NotFound):
        tuning.rollback(catalog.engine, "globex", model)
    assert tuning.rollback(catalog.engine, "acme", model) is None
    catalog._searcher.adapters.forget()
    assert _top1(catalog, phrases) == before


def test_an_adapter_that_loses_is_refused_with_its_figures(shop: tuple[Catalog, list[str]]) -> None:
    catalog, _ = shop
    model = catalog.registered_model()
    pairs = tuning.gather(catalog.engine, model, "acme", catalog.embedder.embed_texts)
    shuffled = list(np.random.default_rng(1).permutation(pairs.targets))  # pairs that teach nothing
    trained = adapter.train(pairs.queries, shuffled, pairs.products, pairs.groups)
    assert not trained.wins
    info = tuning.store(catalog.engine, "acme", model, trained)
    with pytest.raises(InvalidInput, match=r"didn.t beat the identity.*held-out MRR"):
        tuning.activate(catalog.engine, "acme", model, info.id)
    listed = tuning.listed(catalog.engine, "acme", model)
    assert listed[0].id == info.id and not listed[0].active and listed[0].version == max(i.version for i in listed)


def test_too_few_pairs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at least 20 pairs"):
        adapter.train(np.eye(8, dtype=np.float32), list(range(8)), np.eye(8, dtype=np.float32), list(range(8)))


def test_events_become_pairs(shop: tuple[Catalog, list[str]]) -> None:
    catalog, phrases = shop
    found = catalog.search(text=phrases[5], tenant="acme", k=5, mode="semantic", parse=False, adapter=False)
    catalog.record_events("acme", [{"query_id": found.query_id, "action": "purchase",
                                    "object_id": found[2].product_id, "position": 3}])  # fmt: skip
    pairs = tuning.gather(catalog.engine, catalog.registered_model(), "acme", catalog.embedder.embed_texts,
                          titles=False)  # fmt: skip
    assert pairs.sources["events"] == 1 and [pairs.product_ids[t] for t in pairs.targets] == [found[2].product_id]


def test_the_tune_command_trains_lists_activates_and_rolls_back(
    shop: tuple[Catalog, list[str]], tiny_siglip: Path, tmp_path: Path
) -> None:
    catalog, phrases = shop
    env = {"IMGSEARCH_DATABASE_URL": catalog.engine.url.render_as_string(hide_password=False),
           "IMGSEARCH_MODEL": str(tiny_siglip)}  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"text": p + " please", "product_id": f"sku-{i}"})
                               for i, p in enumerate(phrases[:50])))  # fmt: skip
    trained = run_cli("tune", "--tenant", "acme", "--pairs", str(pairs), "--activate", **env)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"\d+ pairs \(\d+ from events, 300 from titles, 50 from the file\)", trained.stderr)
    assert "beats the identity" in trained.stdout and "is active for acme" in trained.stdout
    listed = run_cli("tune", "list", "--tenant", "acme", **env)
    assert listed.returncode == 0 and "\tactive\t" in listed.stdout
    back = run_cli("tune", "rollback", "--tenant", "acme", **env)
    assert back.returncode == 0, back.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "red boot", "product_id": "no-such-sku"}\n')
    refused = run_cli("tune", "--tenant", "acme", "--pairs", str(bad), **env)
    assert refused.returncode == 2 and refused.stderr.strip().endswith("has no embedded product 'no-such-sku'")
    assert "Traceback" not in refused.stderr
    unknown = run_cli("tune", "activate", "999999", "--tenant", "acme", **env)
    assert unknown.returncode == 3


def test_a_model_whose_vectors_come_from_elsewhere_tunes_on_a_pairs_files_vectors(
    database_url: str, tmp_path: Path
) -> None:
    """No text tower here: the pairs file brings query vectors (made outside), and only them."""
    rng = np.random.default_rng(8)
    with Catalog.open(database_url) as catalog:
        model = catalog.add_model("outside-16", 16, activate=True)
        images = rng.standard_normal((120, 16)).astype(np.float32)
        catalog.add_many([{"tenant": "acme", "product_id": f"sku-{i}", "embedding": v} for i, v in enumerate(images)])
        skew = np.eye(16) + 0.8 * rng.standard_normal((16, 16)) / 4
        lines = []
        for _ in range(600):
            i = int(rng.integers(0, 120))
            query = images[i] @ np.linalg.inv(skew).T + 0.1 * rng.standard_normal(16)
            lines.append(json.dumps({"vector": [float(x) for x in query], "product_id": f"sku-{i}"}))
        pairs_file = tmp_path / "pairs.jsonl"
        pairs_file.write_text("\n".join(lines))
        pairs = tuning.gather(catalog.engine, model, "acme", None, pairs_file)
        assert pairs.sources == {"events": 0, "titles": 0, "file": 600}
        trained = adapter.train(pairs.queries, pairs.targets, pairs.products, pairs.groups)
        assert trained.wins
        info = tuning.store(catalog.engine, "acme", model, trained)
        tuning.activate(catalog.engine, "acme", model, info.id)
        catalog._searcher.adapters.forget()
        query = images[7] @ np.linalg.inv(skew).T
        plain = {h.product_id: h.distance for h in catalog.search(vector=query, tenant="acme", k=120)}
        mapped = catalog.search(vector=query, tenant="acme", k=1, adapter=True)[0]
        assert mapped.product_id == "sku-7" and mapped.distance < plain["sku-7"]  # mapped toward its image
        bad = tmp_path / "text.jsonl"
        bad.write_text('{"text": "red boot", "product_id": "sku-1"}\n')
        with pytest.raises(InvalidInput, match="the model embeds no text"):
            tuning.gather(catalog.engine, model, "acme", None, bad)
