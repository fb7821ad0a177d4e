"""``imgsearch finetune`` on a shop: pairs from products, clicks and a file; a held-out judgement
against the active model; a new model registered, backfilled, activated only when it wins; and
the command as a subprocess."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.embed.model import Embedder
from imgsearch.errors import InvalidInput
from imgsearch.finetune import pairs as shop_pairs
from imgsearch.finetune import run
from imgsearch.settings import Settings
from imgsearch.work import reembed
from tests.helpers import run_cli


def _embedders(catalog: Catalog):  # type: ignore[no-untyped-def]
    return lambda name: Embedder(name, options=catalog.embedder.options)


def test_pairs_come_from_product_text_clicks_and_a_file_and_split_by_product(
    drawn_shop: Catalog, tmp_path: Path
) -> None:
    catalog = drawn_shop
    found = catalog.search(text="a red mug", tenant="acme", k=5, mode="semantic", parse=False)
    catalog.record_events("acme", [{"query_id": found.query_id, "action": "click",
                                    "object_id": found[1].product_id, "position": 2}])  # fmt: skip
    pairs_file = tmp_path / "pairs.jsonl"
    (tmp_path / "extra.png").write_bytes(catalog.image_content(found[0].image_id, tenant="acme") or b"")
    pairs_file.write_text(
        "\n".join(json.dumps(line) for line in (
            {"text": "a mug for tea", "product_id": "p3"},
            {"text": "my favourite", "image_id": found[0].image_id},
            {"image": "extra.png", "product_id": "p4"},
        ))
    )
    gathered = shop_pairs.gather(catalog.engine, Settings().downloads(), tenant="acme", pairs_file=pairs_file)
    # each product's title and whole text with its one image (p4's also with the file's image); the
    # click; the file's three lines
    assert gathered.sources == {"products": 2 * 160 + 2, "events": 1, "file": 3}
    from sqlalchemy import text

    with catalog.engine.connect() as conn:
        row = conn.execute(text("SELECT id, title, category, attributes, description FROM imgsearch.products "
                                "WHERE product_id = 'p3'")).one()  # fmt: skip
    texts = [p.text for p in gathered.pairs if p.product == f"acme/{row.id}"]
    # its title, then its whole text (title, category, attribute values by key, description), then the file's
    whole = f"{row.title} {row.category} {row.attributes['color']} {row.attributes['pattern']} {row.description}"
    assert texts == [row.title, whole, "a mug for tea"]
    training, held_out = shop_pairs.split(gathered.pairs, seed=0)
    assert {p.product for p in training}.isdisjoint({p.product for p in held_out})
    assert len({p.product for p in held_out}) == 32  # 20% of 160 products
    other = shop_pairs.gather(catalog.engine, Settings().downloads(), tenant="globex")
    assert other.pairs == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: not JSON"),
        ('{"text": "x"}', 'line 1: a pair is one of "text" and "image", with one of "product_id" and "image_id"'),
        ('{"text": "x", "image": "y", "product_id": "p1"}', "a pair is one of"),
        ('{"text": "x", "product_id": "no-such"}', "line 1: no product 'no-such' with a ready image"),
        ('{"text": "", "product_id": "p1"}', '"text" must be a non-empty string'),
        ('{"text": "x", "image_id": 987654321}', "line 1: no ready image 987654321"),
        ('{"text": "x", "image_id": "1; DROP TABLE x"}', "no ready image '1; DROP TABLE x'"),
        ('{"image": "missing.png", "product_id": "p1"}', "image 'missing.png': No such file"),
    ],
)
def test_a_bad_pairs_file_line_is_named(drawn_shop: Catalog, tmp_path: Path, line: str, message: str) -> None:
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text(line + "\n")
    with pytest.raises(InvalidInput, match=re.escape(message)):
        shop_pairs.gather(drawn_shop.engine, Settings().downloads(), tenant="acme", pairs_file=pairs_file)


def test_a_fine_tune_that_wins_is_registered_backfilled_and_activated_and_the_old_model_stays(
    drawn_shop: Catalog, tmp_path: Path
) -> None:
    catalog = drawn_shop
    base = catalog.registered_model().name
    outcome = run.finetune(
        catalog.engine, _embedders(catalog), home=tmp_path, downloads=Settings().downloads(),
        method="full", epochs=8, lr=2e-3, batch_size=32, activate=True,
    )  # fmt: skip
    assert outcome.name == str((tmp_path / "finetuned" / "small-random+ft-1").resolve())
    assert outcome.wins and outcome.activated
    assert outcome.after.figures["text_to_image"]["recall@10"] > outcome.before.figures["text_to_image"]["recall@10"]
    assert outcome.backfilled == 160 and not outcome.backfill_errors
    record = json.loads(Path(outcome.name, "finetune.json").read_text())
    assert record["base"] == base and record["method"] == "full" and record["after"]["mean"] == outcome.after.mean
    models = {m.name: m for m in reembed.listing(catalog.engine)}
    assert models[outcome.name].active and models[outcome.name].embeddings == 160
    assert not models[base].active and models[base].embeddings == 160  # the previous model stays
    catalog._context.follow_model_switch()
    hits = catalog.search(text="a red striped mug", tenant="acme", k=5, mode="semantic", parse=False)
    assert len(hits) == 5
    listed = run.listing(catalog.engine)
    assert [(item.name, item.active) for item in listed] == [(outcome.name, True)]
    reembed.activate(catalog.engine, base)  # `imgsearch model activate` goes back
    # a second fine-tune numbers itself after the first, starting from the active model's name
    assert run.destination(tmp_path, base).name == "small-random+ft-2"
    assert run.destination(tmp_path, outcome.name).name == "small-random+ft-2"


def test_a_fine_tune_that_does_not_win_is_refused_activation_and_names_the_figures(
    drawn_shop: Catalog, tmp_path: Path
) -> None:
    catalog = drawn_shop
    base = catalog.registered_model().name
    catalog.webhooks.add("https://hooks.example.com/in", tenant="acme", events=["finetune.finished"])
    # a learning rate so small the weights barely move: it can't beat the model it starts from
    outcome = run.finetune(
        catalog.engine, _embedders(catalog), home=tmp_path, downloads=Settings().downloads(),
        method="lora", epochs=1, lr=1e-9, batch_size=64, activate=True,
    )  # fmt: skip
    assert not outcome.wins and not outcome.activated
    assert re.search(r"is not better than .* held-out pairs .*recall@10 .* it stays registered, not active",
                     outcome.refusal())  # fmt: skip
    active = {m.name for m in reembed.listing(catalog.engine) if m.active}
    assert active == {base}
    with catalog.engine.connect() as conn:  # the shop's backend is told, figures and all
        [(kind, data)] = conn.execute(text("SELECT type, data FROM imgsearch.webhook_events")).all()
    assert kind == "finetune.finished" and data["model"] == outcome.name and data["wins"] is False
    assert data["after"]["mean"] == outcome.after.mean and data["tenant"] == "acme"


def test_the_finetune_command_reports_before_and_after_and_lists(
    drawn_shop: Catalog, tmp_path: Path
) -> None:
    env = {
        "IMGSEARCH_DATABASE_URL": drawn_shop.engine.url.render_as_string(hide_password=False),
        "IMGSEARCH_HOME": str(tmp_path),
    }
    done = run_cli("finetune", "--method", "full", "--epochs", "2", "--lr", "1e-3", "--batch-size", "32", **env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"320 pairs \(320 from products, 0 from events, 0 from file\); 128 products to train on, 32 held out",
                     done.stderr)  # fmt: skip
    assert re.search(r"held-out recall@10 before: text→image recall@10 [0-9.]+, nDCG@10 [0-9.]+; image→image", done.stdout)
    assert re.search(r"held-out recall@10 after:  text→image recall@10 [0-9.]+", done.stdout)
    assert "switch with: imgsearch model activate " in done.stdout and "backfilled 160 images" in done.stdout
    listed = run_cli("finetune", "list", **env)
    assert listed.returncode == 0 and "small-random+ft-1" in listed.stdout and "full, " in listed.stdout
    bad = run_cli("finetune", "--pairs", str(tmp_path / "missing.jsonl"), **env)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("No such file or directory")
    assert "Traceback" not in bad.stderr
    refused = run_cli("finetune", "--epochs", "0", **env)
    assert refused.returncode == 2 and "must be a whole number above 0" in refused.stderr


def test_an_image_only_model_is_fine_tuned_on_image_pairs_and_judged_image_to_image(
    server_url: str, template_db: str, tiny_dinov2: Path, tmp_path: Path
) -> None:
    from tests.conftest import new_database
    from tests.finetune.conftest import drawn_rows

    with Catalog.open(new_database(server_url, template_db), model=f"{tiny_dinov2}#gem") as catalog:
        rows = drawn_rows(60, seed=8)
        vectors = catalog.embedder.embed_images([r["image"] for r in rows])  # type: ignore[misc]
        catalog.add_many([{**row, "embedding": v} for row, v in zip(rows, vectors, strict=True)])
        outcome = run.finetune(
            catalog.engine, _embedders(catalog), home=tmp_path, downloads=Settings().downloads(),
            method="full", epochs=2, lr=1e-3, batch_size=16,
        )  # fmt: skip
        assert outcome.name.endswith("/tiny-dinov20+ft-1#gem")
        assert set(outcome.before.figures) == set(outcome.after.figures) == {"image_to_image"}
        assert outcome.backfilled == 60 and not outcome.activated
        assert [item.record["base"] for item in run.listing(catalog.engine) if item.record] == [f"{tiny_dinov2}#gem"]
        tuned = catalog.with_model(outcome.name)
        assert len(tuned.search(image=rows[0]["image"], tenant="acme", k=3)) == 3


def test_too_few_products_are_refused_naming_the_count() -> None:
    from imgsearch.finetune.training import Pair

    pairs = [Pair(f"p{i}", "a red mug", b"x") for i in range(24)]
    with pytest.raises(InvalidInput, match=r"at least 25 products with a ready image .* got 24"):
        shop_pairs.split(pairs)
    training, held_out = shop_pairs.split([*pairs, Pair("p24", "a cap", b"y")])
    assert len(held_out) == 5 and len(training) == 20
