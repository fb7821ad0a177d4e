"""The search path's regression guard: bench/search/search.py at 20k rows, each filter's ratios
beside the ones recorded in docs/benchmarks.md, any that grew by more than 20% marked.

    make bench-quick
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/quick.py [--write]

Run it whenever the search path changes. It takes under two minutes (the first run also loads the
20k-row catalog into the database ``bench_quick`` of the embedded server, about 20 s). The ratios
compared are each filter's imgsearch p50 over its block's unfiltered baseline and over its floor
(imgsearch's own statements replayed bare), and for "shop facets" the shop's facets from the kept
counts over its unfiltered search and over the one pass (migration 0039), for "category facets"
the same in a 1% category (migration 0055), for "shop attributes" a
shop's attribute filter over the same search without a shop and over the shop's search without
the list of its matching products (migration 0042), for "far codes" a far filter of 4,000 rows
read by the binary codes over the unfiltered search and over the same search without the codes
(migration 0043, on calibrated vectors: ``bench_quick_calibrated``), with searches unrecorded
(``IMGSEARCH_RECORD_QUERIES=false``), and for "recorded search" a search recorded in the query
log (the default, written off the search's path) over the same search unrecorded and over the
unrecorded search plus the round trip any synchronous record would add (the full figures are
bench/search/feedback_load.py's); both are measured in the same run, so the box's speed
cancels out, though not its noise: a single marked ratio is a reason to rerun, one marked twice a
reason to look. Not a CI test for that reason. ``--write`` records this run's ratios as the new
reference.

The figure it produces: docs/benchmarks.md, "Regression guard".
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DOCS = HERE.parents[2] / "docs" / "benchmarks.md"
SECTION = "## Regression guard"
GREW = 1.20
COMMAND = [sys.executable, str(HERE.parent / "search.py"), "--rows", "20000", "--queries", "10"]


def run() -> dict[str, tuple[float, float]]:
    """This run's imgsearch ratios by filter: (p50 / baseline, p50 / floor)."""
    plot = Path("/tmp") / "imgsearch-bench-quick.png"
    cmd = [*COMMAND, "--database", "bench_quick", "--plot", str(plot)]
    lines: list[str] = []
    # the search path alone: each search's record (its own benchmark, feedback_load.py) stays out
    env = {**os.environ, "IMGSEARCH_RECORD_QUERIES": "false"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("  ", "loading", "reusing")):
                print(line, end="", flush=True)  # progress
    if proc.returncode:
        sys.exit(f"bench/search/search.py failed with exit code {proc.returncode}")
    return parse(lines, method_column=1)


def facet_ratios(rounds: int = 15) -> dict[str, tuple[float, float]]:
    """The facets from the counts the triggers keep, the shop's (migration 0039) and a 1%
    category's (0055): their p50 over the same search's without facets and over the one pass's
    (the statement other filters' facets use), timed in turns on the same catalog."""
    import numpy as np

    from imgsearch import Catalog
    from imgsearch.settings import Settings

    sys.path.insert(0, str(HERE.parents[1]))
    from _catalog import database_url

    settings = Settings()
    url = database_url(settings.home, "bench_quick")
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        queries = np.random.default_rng(3).standard_normal((rounds, catalog.dim))
        return {
            "shop facets": _facet_ratios(catalog, queries, {}),
            "category facets": _facet_ratios(catalog, queries, {"category": "cat-042"}),
        }


def _facet_ratios(catalog: Any, queries: Any, where: dict[str, Any]) -> tuple[float, float]:
    from imgsearch.search import facets, plans
    from imgsearch.search.filters import Filters

    model, shop = catalog.active_model, Filters(tenant="acme", **where)
    times: dict[str, list[float]] = {"search": [], "kept": [], "one pass": []}

    def search(i: int) -> None:
        catalog.search(vector=queries[i], tenant="acme", total=False, k=10, **where)

    def kept(_: int) -> None:
        with catalog.search_engine.begin() as conn:
            facets.count(conn, model, shop, None, facets=True)

    def one_pass(_: int) -> None:
        with catalog.search_engine.begin() as conn:
            plans.plain_settings(conn)
            conn.execute(facets.statement(model, shop, False), shop.params()).one()

    ways = {"search": search, "kept": kept, "one pass": one_pass}
    for i in range(len(queries) + 2):  # the first two warm the plans
        for way, fn in ways.items():
            start = time.perf_counter()
            fn(i % len(queries))
            if i >= 2:
                times[way].append(time.perf_counter() - start)
    p50 = {way: statistics.median(values) for way, values in times.items()}
    return p50["kept"] / p50["search"], p50["kept"] / p50["one pass"]


def attribute_ratios(rounds: int = 15) -> dict[str, tuple[float, float]]:
    """A shop's attribute filter (one value of ``bucket``, under its row-level security: the list
    of its matching products, migration 0042): its p50 over the same search without a shop and
    over the shop's search without the list (bench/search/shop_attributes.py's columns), in turns."""
    import numpy as np

    from imgsearch import Catalog
    from imgsearch.search.shop_filters import ShopFilters
    from imgsearch.settings import Settings

    sys.path.insert(0, str(HERE.parents[1]))
    from _catalog import database_url

    settings = Settings()
    url = database_url(settings.home, "bench_quick")
    resolved = ShopFilters.resolved

    def unlisted(self: ShopFilters, conn: Any, filters: Any) -> Any:
        return filters  # the shop's search as before migration 0042

    times: dict[str, list[float]] = {"catalog": [], "no list": [], "shop": []}
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        rng = np.random.default_rng(4)
        queries = rng.standard_normal((rounds, catalog.dim))
        buckets = rng.integers(0, 10_000, rounds)
        for i in range(rounds + 2):  # the first two warm the plans
            for name in times:
                ShopFilters.resolved = unlisted if name == "no list" else resolved  # type: ignore[method-assign]
                start = time.perf_counter()
                catalog.search(
                    vector=queries[i % rounds],
                    tenant=None if name == "catalog" else "acme",
                    attributes={"bucket": int(buckets[i % rounds])},
                    total=False,
                    k=10,
                )
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
    ShopFilters.resolved = resolved  # type: ignore[method-assign]
    p50 = {name: statistics.median(values) for name, values in times.items()}
    return {"shop attributes": (p50["shop"] / p50["catalog"], p50["shop"] / p50["no list"])}


def codes_ratios(rounds: int = 15) -> dict[str, tuple[float, float]]:
    """A far filter read by the binary codes (migration 0043): 20 categories (4,000 rows) far from
    the query, on calibrated vectors (``bench_quick_calibrated``, where the codes pass their
    check; the clustered catalog's don't), searched with ``exact_max_fraction`` 0.3 (at 20k rows
    the default bound, 3,000 rows, is the codes' least); its p50 over the unfiltered search and
    over the same search without the codes (bench/search/far_codes.py's columns), in turns, each
    way on another query vector than the one before it."""
    import numpy as np

    from imgsearch import Catalog
    from imgsearch.db import filter_indexes
    from imgsearch.settings import Settings

    sys.path.insert(0, str(HERE.parents[1]))
    from _catalog import cluster_centres, stored_catalog

    url, data, labels, _ = stored_catalog(20_000, "calibrated", "bench_quick_calibrated")
    centres = cluster_centres(data, labels)
    settings = Settings(exact_max_fraction=0.3)
    ways = ("search", "codes", "no codes")
    times: dict[str, list[float]] = {name: [] for name in ways}
    with (
        Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as on,
        Catalog.open(
            url,
            model="google/siglip-base-patch16-224",
            settings=settings.model_copy(update={"binary_codes": False}),
        ) as off,
    ):
        filter_indexes.refresh(on.engine, on.active_model)  # the codes' check, as the import runs it
        strategies: list[str] = []
        on.on_search_plan = lambda plan: strategies.append(plan.strategy)
        rng = np.random.default_rng(6)
        rows = rng.integers(0, len(data), rounds)
        for i in range(rounds + 2):  # the first two warm the plans
            for j, name in enumerate(ways):
                row = int(rows[(i + 5 * j) % rounds])
                far = np.argsort(centres @ centres[labels[row]])  # the clusters least like it first
                categories = list(dict.fromkeys(f"cat-{c // 2:03d}" for c in far))[:20]
                start = time.perf_counter()
                if name == "search":
                    on.search(vector=data[row], total=False, k=10)
                else:
                    (on if name == "codes" else off).search(
                        vector=data[row], category=categories, total=False, k=10
                    )
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
    if strategies.count("codes") < rounds:
        sys.exit(
            f"far codes: the searches didn't read the codes ({strategies}): run `imgsearch index refresh`?"
        )
    p50 = {name: statistics.median(values) for name, values in times.items()}
    return {"far codes": (p50["codes"] / p50["search"], p50["codes"] / p50["no codes"])}


def recording_ratios(rounds: int = 300) -> dict[str, tuple[float, float]]:
    """A recorded search (the default: its query-log row written off the search's path by the
    catalog's recorder thread, issue 72): its p50 over the same search unrecorded and over the
    floor any synchronous record must pay (the unrecorded search, then a bare ``SELECT 1`` on the
    pool for writes, as bench/search/feedback_load.py's "floor"), in turns, a search each. The
    run then checks that every recorded search's row was written."""
    import numpy as np
    from sqlalchemy import text

    from imgsearch import Catalog
    from imgsearch.settings import Settings

    sys.path.insert(0, str(HERE.parents[1]))
    from _catalog import database_url

    settings = Settings(model="google/siglip-base-patch16-224")
    url = database_url(settings.home, "bench_quick")
    times: dict[str, list[float]] = {"unrecorded": [], "recorded": [], "floor": []}
    ids: list[str] = []
    with (
        Catalog.open(url, settings=settings) as logged,
        Catalog.open(url, settings=settings.model_copy(update={"record_queries": False})) as plain,
    ):
        queries = np.random.default_rng(7).standard_normal((rounds, plain.dim))

        def round_trip() -> None:
            with plain.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("SELECT 1")

        for i in range(rounds + 10):  # the first ten warm the plans and the recorder
            for name in times:
                start = time.perf_counter()
                found = (logged if name == "recorded" else plain).search(
                    vector=queries[i % rounds], tenant="acme", total=False, k=10
                )
                if name == "floor":
                    round_trip()
                if i >= 10:
                    times[name].append(time.perf_counter() - start)
                if name == "recorded":
                    ids.append(str(found.query_id))
    # the recording catalog closed: every row it was handed is written
    with Catalog.open(url, settings=settings) as check, check.engine.connect() as conn:
        written = conn.execute(
            text("SELECT count(*) FROM imgsearch.search_queries WHERE query_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": ids},
        ).scalar_one()
    if written != len(ids):
        sys.exit(f"recorded search: {written} of {len(ids)} searches' rows were written")
    p50 = {name: statistics.median(values) for name, values in times.items()}
    return {"recorded search": (p50["recorded"] / p50["unrecorded"], p50["recorded"] / p50["floor"])}


def parse(lines: list[str], method_column: int | None) -> dict[str, tuple[float, float]]:
    """Ratios from a markdown table: search.py's (rows of every method; keeps imgsearch's) or
    the guard's own (filter, p50 / baseline, p50 / floor)."""
    ratios: dict[str, tuple[float, float]] = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        numbers = [float(m.group(1)) for c in cells if (m := re.fullmatch(r"([0-9.]+)x", c))]
        if method_column is not None:
            # p50 / baseline, / floor (then / library floor)
            if len(cells) > method_column and cells[method_column] == "imgsearch" and len(numbers) >= 2:
                ratios[cells[0]] = (numbers[0], numbers[1])
        elif len(numbers) >= 2:
            ratios[cells[0]] = (numbers[0], numbers[1])
    return ratios


def recorded() -> tuple[dict[str, tuple[float, float]], str]:
    text = DOCS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    return parse(body.splitlines(), method_column=None), body


def write(ratios: dict[str, tuple[float, float]]) -> None:
    _, body = recorded()
    table = ["| filter | imgsearch / baseline | imgsearch / floor |", "|---|---|---|"]
    table += [f"| {name} | {base:.2f}x | {floor:.2f}x |" for name, (base, floor) in ratios.items()]
    # the table's rows, up to the first line that isn't one
    new = re.sub(r"\| filter \| imgsearch / baseline[^\n]*\n(?:\|[^\n]*\n?)*", "\n".join(table) + "\n", body)
    DOCS.write_text(DOCS.read_text().replace(body, new))
    print(f"recorded in {DOCS.relative_to(HERE.parents[2])}, {SECTION[3:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="record this run's ratios in docs/benchmarks.md")
    args = parser.parse_args()
    start = time.monotonic()
    now = run() | facet_ratios() | attribute_ratios() | codes_ratios() | recording_ratios()
    before, _ = recorded()
    print(f"\n20k rows, 10 queries per filter, {time.monotonic() - start:.0f} s; ratios now | in docs\n")
    print("| filter | imgsearch / baseline | docs | imgsearch / floor | docs | |")
    print("|---|---|---|---|---|---|")
    marked = 0
    for name, (base, floor) in now.items():
        old = before.get(name)
        grew = old is not None and (base > GREW * old[0] or floor > GREW * old[1])
        marked += grew
        was = (f"{old[0]:.2f}x", f"{old[1]:.2f}x") if old else ("-", "-")
        mark = "**grew > 20%**" if grew else ""
        print(f"| {name} | {base:.2f}x | {was[0]} | {floor:.2f}x | {was[1]} | {mark} |")
    print(f"\n{marked} of {len(now)} filters grew by more than 20%" + (": run it again" if marked else ""))
    if args.write:
        write(now)


if __name__ == "__main__":
    main()
