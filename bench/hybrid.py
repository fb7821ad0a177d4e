"""Hybrid search, lexical search, facets and query understanding at 100k products, in one run.

    .venv/bin/python bench/hybrid.py --products 100000 --queries 60

A catalog of ``--products`` products of one shop, one 768-d image each (clustered unit vectors,
or with ``--data calibrated`` vectors shaped as real embeddings are, bench/search/calibration.py;
imported), each with a title, a brand, a category and attributes drawn from a synthetic
vocabulary (200 brands, 100 categories, 24 colours, 12 materials, 400 nouns), and a base-size
SigLIP (random weights: speed, not quality) for the text side. Query texts are 1-3 words of that
vocabulary; each is embedded once before timing, so every timed search reads its vector from the
text cache and the figures are the searches' own.

Per query, in rotating order, each timed from the call to the result:

* **semantic**: ``mode="semantic"``, one hit per product (``group_by_product``): the baseline;
* **hybrid**: ``mode="hybrid"``: the semantic side, then the lexical side and the fusion; target
  p50 <= 1.5x semantic;
* **lexical**: ``mode="lexical"``, and its floor: ``imgsearch.lexical_match`` (the text's matches
  and their rank parts) run bare, in a transaction of its own; the semantic p50 plus that one is
  what the two sides cost apart (hybrid runs them in one transaction, and may cost less);
* **facets**: the facets alone (``imgsearch.search.facets.count``) over the whole match set
  (every product of the shop), in a transaction of its own: read from the counts the triggers
  keep (migration 0039); target <= 3x the semantic search's p50. Beside it, **the one pass**: the
  statement a filtered search's facets use, over the whole shop (what a shop's facets cost before
  0039), and its floor, one pass reading each product's category, brand, price and attributes,
  which any count made from the products must make;
* **total**: the count alone (``total=True``, the default, adds it to a search), and its floor, a
  bare ``count(*)`` of the shop's products.

All searches use ``parse=False, total=False``; parse cost is timed apart: ``understanding.parse``
of the query texts against a vocabulary of ``--vocabulary`` terms, target <= 1 ms.

Run twice at 20k products first to see the spread; the figures: docs/benchmarks.md, "Hybrid search".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from _catalog import DATA, calibrated_with_labels, clustered_with_labels
from _data import database_url
from _models import base_checkpoint

from imgsearch import Catalog
from imgsearch.search import facets, plans, understanding
from imgsearch.search.filters import Filters
from imgsearch.settings import Settings

DB = "bench_hybrid"
TENANT = "shop"
COLOURS = [
    "red", "blue", "green", "black", "white", "grey", "navy", "beige", "brown", "pink", "purple", "orange",
    "yellow", "teal", "olive", "maroon", "cream", "silver", "gold", "khaki", "coral", "mint", "lilac", "rust",
]  # fmt: skip
MATERIALS = ["cotton", "wool", "leather", "linen", "silk", "denim", "canvas", "suede", "nylon", "cashmere",
             "velvet", "polyester"]  # fmt: skip


def vocabulary(rng: np.random.Generator) -> dict[str, list[str]]:
    syllables = ["ka", "lo", "mi", "ren", "sa", "to", "vi", "bor", "den", "fel", "gar", "han", "ix", "jun"]

    def word(parts: int) -> str:
        return "".join(rng.choice(syllables, parts))

    nouns = sorted({word(3) for _ in range(600)})[:400]
    return {
        "brands": sorted({word(2).capitalize() + word(2) for _ in range(300)})[:200],
        "categories": sorted({word(2) + "s" for _ in range(150)})[:100],
        "nouns": nouns,
    }


def rows(
    count: int, dim: int, words: dict[str, list[str]], seed: int, data: str = "clustered"
) -> tuple[list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(seed)
    make = calibrated_with_labels if data == "calibrated" else clustered_with_labels
    vectors, labels = make(count, dim, seed)
    out = []
    for i in range(count):
        cluster = int(labels[i])
        colour, material = COLOURS[rng.integers(len(COLOURS))], MATERIALS[rng.integers(len(MATERIALS))]
        noun = words["nouns"][(cluster * 2 + int(rng.integers(2))) % len(words["nouns"])]
        out.append(
            {
                "tenant": TENANT,
                "product_id": f"SKU-{i:07d}",
                "embedding": vectors[i],
                "title": f"{colour.capitalize()} {material} {noun}",
                "brand": words["brands"][cluster % len(words["brands"])],
                "category": words["categories"][cluster // 2 % len(words["categories"])],
                "price": round(float(rng.uniform(5, 500)), 2),
                "currency": "EUR",
                "attributes": {"colour": colour, "material": material},
                "description": f"A {material} {noun} in {colour}, by {words['brands'][cluster % 200]}.",
            }
        )
    return out, vectors


def load(catalog: Catalog, count: int, words: dict[str, list[str]], data: str = "clustered") -> None:
    with catalog.engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM imgsearch.products")).scalar_one()
    if have == count:
        return
    if have:
        with catalog.engine.begin() as conn:
            conn.execute(text("TRUNCATE imgsearch.products, imgsearch.images CASCADE"))
    made, _ = rows(count, catalog.dim, words, seed=5, data=data)
    started = time.perf_counter()
    catalog.import_vectors(made, progress=True)
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE imgsearch.products"))
        conn.execute(text("VACUUM ANALYZE imgsearch.embeddings"))
    print(f"imported {count} products in {time.perf_counter() - started:.0f} s", flush=True)


def queries(words: dict[str, list[str]], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind = i % 3
        noun = words["nouns"][rng.integers(len(words["nouns"]))]
        if kind == 0:
            out.append(noun)
        elif kind == 1:
            out.append(f"{COLOURS[rng.integers(len(COLOURS))]} {noun}")
        else:
            out.append(
                f"{words['brands'][rng.integers(len(words['brands']))].lower()} {MATERIALS[rng.integers(12)]} {noun}"
            )
    return out


def own_database(settings: Settings, data: str = "clustered") -> str:
    """The database ``bench_hybrid`` (``bench_hybrid_calibrated``) of the embedded server, made the first time."""
    return database_url(settings.home, DB if data == "clustered" else f"{DB}_{data}")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def parse_cost(texts: list[str], terms: int, rng: np.random.Generator) -> tuple[int, float]:
    syllables = [
        "ka",
        "lo",
        "mi",
        "ren",
        "sa",
        "to",
        "vi",
        "bor",
        "den",
        "fel",
        "gar",
        "han",
        "ix",
        "jun",
        "qu",
    ]
    made: set[str] = set()
    while len(made) < terms:
        made.add(" ".join("".join(rng.choice(syllables, 3)) for _ in range(int(rng.integers(1, 3)))))
    listed = sorted(made)
    third = len(listed) // 3
    vocab = understanding.Vocabulary.of(
        listed[:third],
        listed[third : 2 * third],
        [("colour" if i % 2 else "material", v) for i, v in enumerate(listed[2 * third :])],
    )
    priced = [f"{q} under ${10 + i % 90}" for i, q in enumerate(texts)]
    for q in priced:
        understanding.parse(q, vocab)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        for q in priced:
            understanding.parse(q, vocab)
    return len(vocab), (time.perf_counter() - start) * 1000 / (rounds * len(priced))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--vocabulary", type=int, default=10_000)
    parser.add_argument(
        "--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "hybrid_benchmark.png")
    )
    parser.add_argument("--data", choices=DATA, default="clustered", help="the images' vectors")
    args = parser.parse_args()

    settings = Settings()
    checkpoint = base_checkpoint(settings.home)
    url = own_database(settings, args.data)
    rng = np.random.default_rng(1)
    words = vocabulary(np.random.default_rng(2))
    with Catalog.open(url, model=str(checkpoint), settings=settings) as catalog:
        load(catalog, args.products, words, args.data)
        texts = queries(words, args.queries, seed=3)
        print(f"embedding {len(texts)} query texts once (base-size SigLIP, random weights) ...", flush=True)
        for q in texts:  # into the text cache: the timings below are the searches'
            catalog.search(text=q, tenant=TENANT, mode="semantic", parse=False, total=False, k=1)
        ways: dict[str, Callable[[str], Any]] = {
            "semantic": lambda q: catalog.search(
                text=q, tenant=TENANT, mode="semantic", parse=False, total=False, group_by_product=True
            ),
            "hybrid": lambda q: catalog.search(
                text=q, tenant=TENANT, mode="hybrid", parse=False, total=False
            ),
            "lexical": lambda q: catalog.search(
                text=q, tenant=TENANT, mode="lexical", parse=False, total=False
            ),
        }
        model = catalog.active_model
        shop = Filters(tenant=TENANT)

        def facet_counts(_: str) -> None:
            with catalog.search_engine.begin() as conn:
                facets.count(conn, model, shop, None, facets=True)

        def one_pass(_: str) -> None:  # the statement filtered facets use, over the whole shop
            with catalog.search_engine.begin() as conn:
                plans.plain_settings(conn)
                conn.execute(facets.statement(model, shop, False), shop.params()).one()

        def total_only(_: str) -> None:
            with catalog.search_engine.begin() as conn:
                facets.count(conn, model, shop, None, facets=False)

        def bare_count(_: str) -> None:
            with catalog.search_engine.begin() as conn:
                conn.execute(
                    text("SELECT count(*) FROM imgsearch.products WHERE tenant = :t"), {"t": TENANT}
                ).scalar()

        def read_columns(_: str) -> None:  # what exact facets must at least do: read each product's values
            with catalog.search_engine.begin() as conn:
                conn.execute(
                    text(
                        "SELECT sum(length(coalesce(category, '')) + length(coalesce(brand, '')) "
                        "+ coalesce(price, 0)::int + pg_column_size(attributes)) "
                        "FROM imgsearch.products WHERE tenant = :t"
                    ),
                    {"t": TENANT},
                ).scalar()

        def bare_matches(q: str) -> None:  # the lexical side's floor: its matches, read bare
            with catalog.search_engine.begin() as conn:
                conn.execute(
                    text("SELECT * FROM imgsearch.lexical_match(:q, :plain, :q, NULL, :t)"),
                    {"q": q, "plain": q.lower(), "t": TENANT},
                ).all()

        ways.update(
            {
                "lexical floor: lexical_match bare": bare_matches,
                "facets": facet_counts,
                "facets floor: read the values": read_columns,
                "facets, the one pass": one_pass,
                "total": total_only,
                "total floor: count(*)": bare_count,
            }
        )
        for fn in ways.values():  # warm every statement and plan
            for q in texts[:3]:
                fn(q)
        times: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for i, q in enumerate(texts):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                times[name].append(timed(lambda name=name, q=q: ways[name](q)))
        hits = catalog.search(text=texts[1], tenant=TENANT, mode="hybrid", parse=False, total=False)
        both = sum(1 for h in hits if len(h.matched_by) == 2)
    terms, per_parse = parse_cost(texts, args.vocabulary, rng)
    base = statistics.median(times["semantic"])
    print(
        f"\n{args.products} products, {len(texts)} queries; p50 and p90 in ms, ratio of p50 to semantic's\n"
    )
    print("| way | p50 ms | p90 ms | x semantic p50 |")
    print("|---|---|---|---|")
    for name, values in times.items():
        p50, p90 = statistics.median(values), float(np.percentile(values, 90))
        print(f"| {name} | {p50:.1f} | {p90:.1f} | {p50 / base:.2f} |")
    floor = base + statistics.median(times["lexical floor: lexical_match bare"])
    print(f"| the two sides apart: semantic p50 + lexical_match p50 | {floor:.1f} | | {floor / base:.2f} |")
    print(f"| parse ({terms} vocabulary terms) | {per_parse:.3f} | | {per_parse / base:.3f} |")
    print(f"\n(hybrid hits of {texts[1]!r} found by both sides: {both} of {len(hits)})")
    plot(times, base, args.products, Path(args.plot))
    print(f"plot: {args.plot}")


def plot(times: dict[str, list[float]], base: float, products: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(times)
    p50 = [statistics.median(times[n]) for n in names]
    p90 = [float(np.percentile(times[n], 90)) for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    rows = list(range(len(names)))[::-1]
    colours = ["#0969da" if n == "semantic" else "#bf8700" if "floor" in n else "#8c959f" for n in names]
    ax.barh(rows, p50, color=colours, label="p50")
    ax.scatter(p90, rows, color="#cf222e", zorder=3, label="p90", marker="|", s=200)
    for row, value in zip(rows, p50, strict=True):
        ax.annotate(f" {value:.1f} ms, {value / base:.2f}x", (value, row), va="center", fontsize=8)
    ax.set_yticks(rows, names)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale); x: p50 / semantic p50")
    ax.set_title(f"Hybrid search at {products:,} products (blue: baseline, yellow: floors)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
