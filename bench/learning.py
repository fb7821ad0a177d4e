"""Learning from shoppers: nDCG@10 against the shoppers' hidden preferences, before and after
1k and 10k simulated sessions, with the boosts and the query adapter learned from their feedback.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/learning.py --queries 60 --per-query 40

A simulated shop (:mod:`imgsearch.learning.simulate`): ``--per-query`` products around a skewed
copy (``--gap``) of each of ``--queries`` query texts' embeddings (the tests' tiny SigLIP embeds
them), graded 0-3 by a hidden mix of similarity and an appeal the search can't see; queries
asked by a Zipf law. Shoppers search (semantic, k=10, boosts and adapter on), read the hits
top-down (the cascade model: position bias), click and buy by grade. Before the first session and
after every 1,000, the boosts job runs (as Celery beat would, with the default evidence
minimums: 20 clicks or 2 conversions in 30 days) and an adapter is trained on the events' and
titles' pairs (``imgsearch tune``: activated only when it beats the identity on held-out pairs);
then nDCG@10 is measured over every query once with neither, boosts, the adapter and both (those
searches are not recorded). Last, the time to train a 768 x 768 adapter on ``--train-pairs``
synthetic pairs on this CPU.
The figure it produces: docs/benchmarks.md, "Learning from shoppers" (and docs/learning.png).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from _data import fresh_database

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.learning import adapter, simulate, tuning
from imgsearch.settings import Settings

COLOURS = ["red", "blue", "green", "black", "white", "grey", "navy", "beige", "brown", "pink"]
THINGS = ["boots", "bags", "hats", "dresses", "coats", "scarves", "belts", "shirts", "skirts", "socks"]


def tiny_model(home: Path) -> Path:
    from tests.tiny_models import build_tiny_siglip

    path = home.parent / f"{home.name}-tiny-siglip"
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        build_tiny_siglip(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--per-query", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.6, help="how askew the model reads the shop's words")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000, help="sessions between boost refreshes")
    parser.add_argument("--train-pairs", type=int, default=100_000, help="pairs of the 768-d training time")
    parser.add_argument("--plot", default="docs/learning.png")
    args = parser.parse_args()
    home = Path(os.environ.get("IMGSEARCH_HOME", "/tmp/imgs-bench"))
    home.parent.mkdir(parents=True, exist_ok=True)
    url = fresh_database(home, "bench_learning")
    model = tiny_model(home)
    queries = [f"{c} {t}" for t in THINGS for c in COLOURS][: args.queries]
    settings = Settings(model=str(model))
    quiet = settings.model_copy(update={"record_queries": False})
    rows: list[Row] = []
    try:
        with Catalog.open(url, settings=settings) as catalog, Catalog.open(url, settings=quiet) as judge:
            print(f"building a shop of {len(queries) * args.per_query} products ...", flush=True)
            shop = simulate.build_shop(catalog, "sim", queries, per_query=args.per_query, gap=args.gap, seed=1)
            done = 0
            started = time.perf_counter()
            while True:
                learned = catalog.refresh_boosts()
                adapted = tune(catalog, "sim")
                judge._searcher.router.forget_graphs()
                judge._searcher.adapters.forget()
                found = {name: simulate.ndcg(judge, shop, **flags) for name, flags in VARIANTS.items()}
                rows.append(Row(done, found, learned.query_boosts, learned.product_boosts, adapted))
                print(
                    f"{done:>6} sessions: nDCG@10 " + ", ".join(f"{n} {v:.3f}" for n, v in found.items())
                    + f" ({learned.query_boosts} query boosts; adapter: {adapted}; "
                    f"{time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                if done >= args.sessions:
                    break
                simulate.run_sessions(catalog, shop, args.every, seed=done)
                done += args.every
    finally:
        embedded.stop(home)
    print()
    print("| sessions | none | boosts | adapter | both | query boosts | adapter (held-out MRR vs identity) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if row.sessions in (0, 1_000, args.sessions):
            cells = " | ".join(f"{row.ndcg[n]:.3f}" for n in VARIANTS)
            print(f"| {row.sessions:,} | {cells} | {row.query_boosts} | {row.adapter} |")
    plot(rows, Path(args.plot))
    training_time(args.train_pairs)


@dataclass
class Row:
    sessions: int
    ndcg: dict[str, float]
    query_boosts: int
    product_boosts: int
    adapter: str


VARIANTS = {
    "none": {"boost": False, "adapter": False},
    "boosts": {"boost": True, "adapter": False},
    "adapter": {"boost": False, "adapter": True},
    "both": {"boost": True, "adapter": True},
}


def tune(catalog: Catalog, tenant: str) -> str:
    """Train an adapter on the tenant's pairs (events and titles); activate it when it wins."""
    model = catalog.registered_model()
    pairs = tuning.gather(catalog.engine, model, tenant, catalog.embedder.embed_texts)
    trained = adapter.train(pairs.queries, pairs.targets, pairs.products, pairs.groups)
    info = tuning.store(catalog.engine, tenant, model, trained)
    figures = f"MRR {trained.adapter.mrr:.3f} vs {trained.identity.mrr:.3f}"
    if not trained.wins:
        return f"v{info.version} loses ({figures}), not activated"
    tuning.activate(catalog.engine, tenant, model, info.id)
    catalog._searcher.adapters.forget()
    return f"v{info.version} active ({figures})"


def training_time(count: int) -> None:
    """How long training takes on CPU for ``count`` pairs of 768-d vectors over 20k products."""
    rng = np.random.default_rng(0)
    dim, products = 768, 20_000
    centres = rng.standard_normal((200, dim))
    gallery = (centres[rng.integers(0, 200, products)] + 0.5 * rng.standard_normal((products, dim))).astype(np.float32)
    targets = rng.integers(0, products, count)
    skew = np.eye(dim) + 5.0 * rng.standard_normal((dim, dim)) / np.sqrt(dim)  # held-out top-1 ~0.3 as is
    queries = (gallery[targets] @ skew.T + 4.0 * rng.standard_normal((count, dim))).astype(np.float32)
    started = time.perf_counter()
    trained = adapter.train(queries, targets, gallery, [int(t) for t in targets], epochs=10)
    took = time.perf_counter() - started
    print(
        f"\ntraining a 768 x 768 adapter on {count:,} pairs over {products:,} products: {took:.0f} s "
        f"({trained.epochs} rounds kept of up to 10); held-out MRR {trained.adapter.mrr:.3f} vs "
        f"{trained.identity.mrr:.3f} for the identity"
    )


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sessions = [r.sessions for r in rows]
    for name in VARIANTS:
        ax.plot(sessions, [r.ndcg[name] for r in rows], marker="o", label=name)
    ax.set_xlabel("simulated shopper sessions")
    ax.set_ylabel("nDCG@10 (hidden preferences)")
    ax.set_title("Learning from shoppers' clicks and purchases")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
