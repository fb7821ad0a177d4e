"""Query understanding on its own: price phrases in every form, the tenant's words (plurals,
several words, neighbours only), what is never read, and the refresh of a tenant's vocabulary."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.search import understanding
from imgsearch.search.understanding import Vocabulary, parse

SHOP = Vocabulary.of(
    categories=["shoes", "t-shirts", "dresses", "running shoes"],
    brands=["Adidas", "New Balance"],
    attributes=[("colour", "red"), ("colour", "navy blue"), ("material", "leather"), ("size", "42")],
)


@pytest.mark.parametrize(
    ("query", "low", "high", "rest"),
    [
        ("sandals under $50", None, "50", "sandals"),
        ("sandals below 50 dollars", None, "50", "sandals"),
        ("sandals less than €19.99", None, "19.99", "sandals"),
        ("sandals up to 30 EUR", None, "30", "sandals"),
        ("sandals over 100 usd", "100", None, "sandals"),
        ("sandals above £1,250", "1250", None, "sandals"),
        ("sandals from £10", "10", None, "sandals"),
        ("sandals between 10 and 20", "10", "20", "sandals"),
        ("sandals $10-$20", "10", "20", "sandals"),
        ("sandals 20–40 €", "20", "40", "sandals"),
        ("sandals 40 to 20 GBP", "20", "40", "sandals"),
        ("sandals at least 5 and at most 9 euros", "5", "9", "sandals and"),
        ("size 2-3 sandals", None, None, "size 2-3 sandals"),  # no currency: a size, not a price
        ("sandals from 2010", None, None, "sandals from 2010"),
    ],
)
def test_price_phrases(query: str, low: str | None, high: str | None, rest: str) -> None:
    understood = parse(query, Vocabulary())
    assert understood.price_min == (None if low is None else Decimal(low))
    assert understood.price_max == (None if high is None else Decimal(high))
    assert understood.text == rest


def test_the_tenants_words_become_filters_longest_first() -> None:
    understood = parse("Red leather running shoes by new balance under $90", SHOP)
    assert understood.category == "running shoes"  # the longer phrase, not "shoes"
    assert understood.brand == "New Balance"
    assert understood.attributes == {"colour": "red", "material": "leather"}
    assert understood.price_max == 90 and understood.text == "by"
    assert parse("navy blue dress", SHOP).attributes == {"colour": "navy blue"}
    assert parse("navy blue dress", SHOP).category == "dresses"  # plural and singular agree
    assert parse("blue navy dress", SHOP).attributes == {}  # a phrase's words in its order
    assert parse("size 42 shoes", SHOP).attributes == {}  # a number alone is no value: a size? a year?


def test_quotes_exclusions_and_given_filters_are_never_read() -> None:
    assert parse('"red shoes" for running', SHOP).category is None
    excluded = parse("shoes -red", SHOP)
    assert excluded.attributes == {} and excluded.text == "-red" and excluded.category == "shoes"
    given = parse("red shoes under $50", SHOP, given=["category", "price_max", "attributes.colour"])
    assert (given.category, given.price_max, given.attributes) == (None, None, {})
    assert given.text == "red shoes under $50"
    assert not given.filters


def test_as_json_names_only_what_was_read() -> None:
    assert parse("adidas shoes", SHOP).as_json() == {
        "text": "",
        "category": "shoes",
        "brand": "Adidas",
        "fallback": False,
    }


def test_a_new_brand_is_understood_after_the_refresh(
    database_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add(embedding=np.ones(catalog.dim), tenant="t", product_id="a", brand="Acme", title="Kettle")
        assert catalog.search(text="acme kettle", tenant="t").understood.brand == "Acme"
        monkeypatch.setattr(understanding, "VOCABULARY_REFRESH_SECONDS", 3600.0)
        catalog.add(embedding=np.ones(catalog.dim), tenant="t", product_id="b", brand="Zeta", title="Kettle")
        assert catalog.search(text="zeta kettle", tenant="t").understood.brand is None  # read just now
        monkeypatch.setattr(understanding, "VOCABULARY_REFRESH_SECONDS", 0.0)
        fresh = catalog.search(text="zeta kettle", tenant="t")
        assert fresh.understood.brand == "Zeta" and [hit.product_id for hit in fresh] == ["b"]
        # another tenant's words are never this tenant's filters
        assert catalog.search(text="zeta kettle", tenant="other").understood.brand is None
        # an unchanged catalog isn't read again, however long ago it was read
        reads = []
        monkeypatch.setattr(understanding, "read", lambda conn, tenant: reads.append(1) or understanding.Vocabulary())
        catalog.search(text="zeta kettle", tenant="t")
        assert reads == []
        catalog.update_product("a", tenant="t", title="Electric kettle")
        catalog.search(text="zeta kettle", tenant="t")
        assert reads == [1]


NEAR = Vocabulary.of(
    categories=["sneakers", "shoes", "boots", "running shoes"],
    brands=["Zephyrine", "Tommy Hilfiger", "Lumora", "Lumona", "Bootes"],
    attributes=[("colour", "burgundy"), ("colour", "red"), ("material", "leather")],
)


@pytest.mark.parametrize(
    ("query", "read", "corrected", "rest"),
    [
        ("Zephyrene", {"brand": "Zephyrine"}, {"Zephyrene": "Zephyrine"}, ""),  # a letter changed
        ("zephyrne mug", {"brand": "Zephyrine"}, {"zephyrne": "Zephyrine"}, "mug"),  # a letter dropped
        ("zepyhrine", {"brand": "Zephyrine"}, {"zepyhrine": "Zephyrine"}, ""),  # two letters swapped
        ("sneekers", {"category": "sneakers"}, {"sneekers": "sneakers"}, ""),  # a category
        ("burgandy lether", {"attributes": {"colour": "burgundy", "material": "leather"}},
         {"burgandy": "burgundy", "lether": "leather"}, ""),  # attribute values
        ("tommy hilfigr shirt", {"brand": "Tommy Hilfiger"}, {"tommy hilfigr": "Tommy Hilfiger"}, "shirt"),  # a phrase
        ("zphyrne", {}, {}, "zphyrne"),  # two typos: too far
        ("lumoza", {}, {}, "lumoza"),  # Lumora and Lumona are as near: neither is read
        ("bed", {}, {}, "bed"),  # short words are read as written only ("red")
        ("shoes boots", {"category": "shoes"}, {}, "boots"),  # exact "boots" is never read as Bootes
        ("Zephyrine", {"brand": "Zephyrine"}, {}, ""),  # exact: no correction to tell
    ],
)
def test_near_spellings_of_the_shops_words(
    query: str, read: dict[str, object], corrected: dict[str, str], rest: str
) -> None:
    understood = parse(query, NEAR)
    found = {name: getattr(understood, name) for name in ("category", "brand", "attributes") if getattr(understood, name)}
    assert (found, understood.corrected, understood.text) == (read, corrected, rest)


def test_the_answer_says_what_was_read_as_near() -> None:
    assert parse("zephyrene mug", NEAR).as_json() == {
        "text": "mug", "brand": "Zephyrine", "corrected": {"zephyrene": "Zephyrine"}, "fallback": False
    }  # fmt: skip


def test_near_spellings_cost_no_more_with_a_larger_vocabulary() -> None:
    """The parse looks up the typed phrase's deletions: the candidates it compares don't grow
    with the shop's words (here 200 and 20,000 values, the same work: the same candidates)."""
    small = Vocabulary.of([f"category{i:05d}x" for i in range(200)], ["Zephyrine"], [])
    large = Vocabulary.of([f"category{i:05d}x" for i in range(20_000)], ["Zephyrine"], [])
    compared: list[int] = []
    real = understanding._distance

    def counting(a: str, b: str) -> int:
        compared.append(1)
        return real(a, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(understanding, "_distance", counting)
        assert parse("zephyrene", small).brand == parse("zephyrene", large).brand == "Zephyrine"
    assert len(compared) == 2  # one candidate each


def test_a_misspelled_brand_leads_a_hybrid_search(database_url: str, tiny_siglip: Path) -> None:
    """Three products of brand Zephyrine among others: "Zephyrene" ranks them first, as
    "Zephyrine" does, and the answer says it read the brand."""
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        rng = np.random.default_rng(3)
        rows = [
            {"embedding": rng.standard_normal(catalog.dim), "tenant": "t", "product_id": f"z{i}",
             "brand": "Zephyrine", "title": f"Ceramic vase {i}"}
            for i in range(3)
        ] + [
            {"embedding": rng.standard_normal(catalog.dim), "tenant": "t", "product_id": f"o{i}",
             "brand": f"Other{i}", "title": f"Glass bowl {i}"}
            for i in range(12)
        ]  # fmt: skip
        catalog.add_many(rows)
        for query in ("Zephyrine", "Zephyrene"):
            result = catalog.search(text=query, tenant="t", k=5, mode="hybrid")
            assert {hit.product_id for hit in result[:3]} == {"z0", "z1", "z2"}, query
            assert result.understood.brand == "Zephyrine"
        assert result.understood.corrected == {"Zephyrene": "Zephyrine"}
