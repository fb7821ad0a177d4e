"""`imgsearch update`: product feeds (CSV, JSON Lines) applied all or nothing, errors naming the
file and line, and searches filtering on the new values."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog
from tests.helpers import run_cli, unit


def run_update(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("update", *args, IMGSEARCH_DATABASE_URL=database_url)


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    with Catalog.open(database_url) as cat:
        for i in range(4):
            cat.add(
                embedding=unit(cat.dim, i),
                tenant="acme",
                product_id=f"sku-{i}",
                category="mugs",
                price=10 + i,
                currency="EUR",
                attributes={"color": "red"},
            )
        cat.add(embedding=unit(cat.dim, 9), tenant="globex", product_id="sku-0", category="caps", price=5)
        yield cat


def products(catalog: Catalog) -> dict[tuple[str, str], tuple[object, ...]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tenant, product_id, category, price, currency, attributes FROM imgsearch.products")
        )
        return {(r.tenant, r.product_id): (r.category, r.price, r.currency, r.attributes) for r in rows}


def test_csv_and_jsonl_feeds_update_products_and_searches(
    catalog: Catalog, database_url: str, tmp_path: Path
) -> None:
    csv_feed = tmp_path / "prices.csv"
    # sku-1's empty category keeps it; sku-2 repeats its stored price: nothing to write
    csv_feed.write_text(
        'product_id,price,category,attributes\nsku-0,7.5,sale,"{""color"": ""blue""}"\nsku-1,9,,\nsku-2,12,,\n'
    )
    jsonl_feed = tmp_path / "more.jsonl"
    jsonl_feed.write_text(
        json.dumps({"product_id": "sku-3", "currency": None, "category": "sale"})
        + "\n\n"
        + json.dumps({"tenant": "globex", "product_id": "sku-0", "price": 4})
        + "\n"
    )

    run = run_update(database_url, str(csv_feed), str(jsonl_feed), "--tenant", "acme")

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "updated 4 of 5 products (1 already had these values)"
    assert products(catalog) == {
        ("acme", "sku-0"): ("sale", Decimal("7.5"), "EUR", {"color": "blue"}),
        ("acme", "sku-1"): ("mugs", Decimal("9"), "EUR", {"color": "red"}),
        ("acme", "sku-2"): ("mugs", Decimal("12"), "EUR", {"color": "red"}),
        ("acme", "sku-3"): ("sale", Decimal("13"), None, {"color": "red"}),
        ("globex", "sku-0"): ("caps", Decimal("4"), None, {}),
    }
    hits = catalog.search(vector=unit(catalog.dim, 0), tenant="acme", category="sale", price_max=8)
    assert [h.product_id for h in hits] == ["sku-0"]


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        ("product_id,price\nsku-0,5\nsku-1,-3\n", 2, "prices.csv:3: price must not be negative, got '-3'"),
        (
            "product_id,price\nsku-0,5\nnope,3\nnada,4\n",
            3,
            "prices.csv:3: tenant 'acme' has no product 'nope' (and 1 more); nothing updated",
        ),
        (
            "product_id,price\nsku-0,5\nsku-0,6\n",
            2,
            "FEED:3: price of product 'sku-0' of tenant 'acme' is 6 here, but 5 in FEED:2",
        ),
        ("product_id,prize\nsku-0,5\n", 2, "prices.csv:2: unknown keys ['prize']"),
        ("product_id,price\nsku-0,\n", 2, "prices.csv:2: nothing to change"),
        ("sku,price\nsku-0,5\n", 2, "prices.csv:1: the header ['sku', 'price'] has no 'product_id' column"),
        ("product_id,price\n'; DROP TABLE imgsearch.products; --,5\n", 3, "has no product \"'; DROP TABLE"),
    ],
    ids=[
        "bad value",
        "unknown product",
        "twice",
        "unknown column",
        "no change",
        "no product_id",
        "injection",
    ],
)
def test_a_bad_row_fails_the_feed_naming_its_line_and_writes_nothing(
    catalog: Catalog, database_url: str, tmp_path: Path, content: str, code: int, message: str
) -> None:
    before = products(catalog)
    feed = tmp_path / "prices.csv"
    feed.write_text(content)

    run = run_update(database_url, str(feed), "--tenant", "acme")

    assert run.returncode == code, run.stdout + run.stderr
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert line.startswith("imgsearch: ") and message.replace("FEED", str(feed)) in line
    assert products(catalog) == before


def test_other_tenants_products_are_not_found(catalog: Catalog, database_url: str, tmp_path: Path) -> None:
    before = products(catalog)
    feed = tmp_path / "caps.jsonl"
    feed.write_text(json.dumps({"product_id": "sku-1", "price": 1}) + "\n")  # only acme has sku-1

    run = run_update(database_url, str(feed), "--tenant", "globex")

    assert run.returncode == 3
    assert (
        run.stderr.strip() == f"imgsearch: {feed}:1: tenant 'globex' has no product 'sku-1'; nothing updated"
    )
    assert products(catalog) == before


def test_files_that_are_not_feeds_are_one_line(database_url: str, tmp_path: Path) -> None:
    missing = run_update(database_url, str(tmp_path / "nope.csv"))
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"imgsearch: no such file: {tmp_path / 'nope.csv'}",
    )
    sheet = tmp_path / "prices.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    wrong = run_update(database_url, str(sheet))
    assert (wrong.returncode, wrong.stderr.strip()) == (
        2,
        f"imgsearch: {sheet}: a feed is a .csv, .jsonl or .ndjson file",
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("product_id,price\n")
    nothing = run_update(database_url, str(empty))
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "updated 0 products: the feed has no rows")


def test_a_feed_sets_titles_brands_and_descriptions_that_searches_match(
    catalog: Catalog, database_url: str, tmp_path: Path
) -> None:
    feed = tmp_path / "text.csv"
    feed.write_text(
        "product_id,title,brand,description\n"
        'sku-0,Enamel camping mug,Stanley,"Keeps coffee hot, twelve ounces"\n'
        "sku-1,,Kinto,\n"
    )
    run = run_update(database_url, str(feed), "--tenant", "acme")
    assert run.returncode == 0, run.stderr
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT product_id, title, brand, description FROM imgsearch.products WHERE tenant = 'acme'")
        ).all()
    found = {r.product_id: (r.title, r.brand, r.description) for r in rows}
    assert found["sku-0"] == ("Enamel camping mug", "Stanley", "Keeps coffee hot, twelve ounces")
    assert found["sku-1"] == (None, "Kinto", None)  # an empty cell keeps what was stored
    hits = catalog.search(text="coffee", tenant="acme", mode="lexical", parse=False)
    assert [h.product_id for h in hits] == ["sku-0"] and hits[0].title == "Enamel camping mug"
