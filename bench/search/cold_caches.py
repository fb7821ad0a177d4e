"""What a search's own Python costs with the CPU's caches warm and cold, against its floors.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/cold_caches.py --queries 100 --rounds 3

On bench/search/search.py's catalog (built if missing), at the filters whose statements cost least
(where imgsearch's own Python weighs most) and a 1% one, three methods of that script, in turns
query by query: **imgsearch** (``catalog.search``, unrecorded), its **floor** (its statements
replayed bare) and its **library floor** (the same statements over imgsearch's own transport,
with the least Python a library must run around them, its arguments checked). Twice:

* **warm** — one search after another, as a process that does nothing else runs them;
* **swept** — a pass over 32 MB (read and written) before each search, which leaves none of the
  search's Python (its code, its objects) in the CPU's caches: what the other methods' work
  between two searches does in search.py, and other requests' work in a busy server.

Each filter's p50s and ratios, each regime measured in the same run, and each method's Python
calls in one search (``search.python_calls``). Every method's hits are compared with imgsearch's.

The figure it produces: docs/benchmarks.md, "Where a search's time goes" (cold caches).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import search as bench
from _catalog import DATA, query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.settings import Settings

FILTERS = ("1% near", "0.1% near", "0.1% far", "0.01%")
SWEEP_BYTES = 32 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="each method meets each query this often a regime")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data)
    cases = query_cases(data, labels, args.queries)
    sweep = np.ones(SWEEP_BYTES // 8)

    def swept() -> None:
        sweep[::8] += sweep.sum() * 0.0  # every cache line read, then written (8 floats a line)

    print("| filter | caches | imgsearch p50 ms | floor | library floor | imgsearch / floor "
          "| library floor / floor | imgsearch / library floor |")
    print("|---|---|---|---|---|---|---|---|")
    calls: dict[str, tuple[int, int, int]] = {}
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=Settings(record_queries=False)) as catalog:
        library = bench.library_engine(catalog.engine.url)
        floor_conn = bench.bare_connection(catalog.engine.url)
        for name in FILTERS:
            asked = [(q, dict(filters)[name]) for q, filters in cases]
            captured = bench.capture(catalog, [(q, [(name, kwargs)]) for q, kwargs in asked], [name])
            methods = methods_for(catalog, library, floor_conn, asked, captured)
            for method in methods.values():  # statements prepared, plans cached
                for n in range(min(10, args.queries)):
                    method(n)
            for regime in ("warm", "swept"):
                times: dict[str, list[float]] = {method: [] for method in methods}
                hits: dict[str, dict[int, list[Any]]] = {method: {} for method in methods}
                shift = max(1, args.queries // len(methods))
                for _ in range(args.rounds):
                    for n in range(args.queries):
                        for i, (method, run) in enumerate(methods.items()):
                            m = (n + i * shift) % args.queries  # each method meets each query a round
                            if regime == "swept":
                                swept()
                            start = time.perf_counter()
                            hits[method][m] = run(m)
                            times[method].append((time.perf_counter() - start) * 1000)
                for method in methods:
                    assert all(
                        sorted(hits[method][m]) == sorted(hits["imgsearch"][m]) for m in hits[method]
                    ), f"{name}: {method}'s hits differ from imgsearch's"
                p50 = {method: statistics.median(values) for method, values in times.items()}
                ours, floor, least = p50["imgsearch"], p50["floor"], p50["library floor"]
                print(
                    f"| {name} | {regime} | {ours:.2f} | {floor:.2f} | {least:.2f} | {ours / floor:.2f}x "
                    f"| {least / floor:.2f}x | {ours / least:.2f}x |",
                    flush=True,
                )
            q, kwargs = asked[0]
            calls[name] = (
                min(bench.python_calls(catalog.search, vector=q, k=bench.K, **kwargs) for _ in range(5)),
                min(bench.python_calls(bench.replay, floor_conn, captured[(0, 0)]) for _ in range(5)),
                min(bench.python_calls(bench.library_floor, library, q, captured[(0, 0)], kwargs) for _ in range(5)),
            )
        floor_conn.close()
        library.dispose()
    print("\n| filter | Python calls a search: imgsearch | floor | library floor |\n|---|---|---|---|")
    for name, (ours_calls, floor_calls, least_calls) in calls.items():
        print(f"| {name} | {ours_calls} | {floor_calls} | {least_calls} |")


def methods_for(
    catalog: Catalog, library: Any, floor_conn: Any, asked: list[tuple[Any, dict[str, Any]]], captured: Any
) -> dict[str, Callable[[int], list[Any]]]:
    """Each method as a function of the query's number, giving its hits' image ids."""

    def ours(n: int) -> list[Any]:
        return [hit.image_id for hit in catalog.search(vector=asked[n][0], k=bench.K, **asked[n][1])]

    def floor(n: int) -> list[Any]:
        return bench.replay(floor_conn, captured[(n, 0)])

    def least(n: int) -> list[Any]:
        return bench.library_floor(library, asked[n][0], captured[(n, 0)], asked[n][1])

    return {"imgsearch": ours, "floor": floor, "library floor": least}


if __name__ == "__main__":
    main()
