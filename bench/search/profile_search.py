"""Where a search's time goes, from ``catalog.search`` to the returned hits.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/profile_search.py --queries 30 --rounds 4

On bench/search/search.py's catalog (built if missing), times ``catalog.search(vector=q, k=10,
<filters>)`` at near filters and far ones, and splits each search's wall time into:

* imgsearch's Python: checking the arguments, routing, choosing the plan (exclusive time of
  imgsearch's own functions, SQLAlchemy's connection and transaction objects included);
* the query vector's check (``Query.embed`` of a vector);
* the pool: taking a connection and giving it back;
* each round trip of imgsearch.db.wire, from psycopg's send to its answer (psycopg's Python
  included): the statement, with what goes in its round trip (the shop's deferred scope, the
  settings; wire's ``BEGIN`` when the search has a transaction, a semantic search's first
  statement being one of its own); a statement sent alone (the settings, or the scope the first
  time); the ``COMMIT`` (none after a transaction of its own);
* building the hits from the rows.

Timers wrap those functions (a few microseconds each), not SQLAlchemy's cursor events: a listener
there sends every statement through SQLAlchemy, one round trip each. Then ``EXPLAIN (ANALYZE,
BUFFERS)`` of the statement actually sent (its SQL and values, after the same settings) gives
PostgreSQL's own planning and execution time, which the statement's round trip contains; the rest
of that round trip is the protocol and the socket. The same figures come from py-spy when it is
installed (``--py-spy``: a sampling profile, top functions by own time).

Last column, imgsearch's Python alone: each filter's search run again and again with every statement
answered from memory (the rows its first run got; no statement, BEGIN nor COMMIT reaches the
server), a hot loop: what imgsearch's own code costs with no waiting, the part no database can
take away. In a real search the same code runs colder (each wait hands the core to the server).

The figure it produces: docs/benchmarks.md, "Where a search's time goes".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import DATA, query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.db import wire
from imgsearch.search import hybrid, queries, routing, service, strategy
from imgsearch.settings import Settings

FILTERS = ("100%", "100% tenant", "10% near", "1% near, shop", "1% far, shop", "3% far", "10% far")
PARTS = (
    "imgsearch Python",
    "query vector check",
    "pool",
    "round trip: settings",
    "round trip: statement",
    "round trip: COMMIT",
    "hits from rows",
)


class Tracer:
    """Exclusive time per label over nested spans, per search."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [label, start, children's time]
        self.times: dict[str, float] = defaultdict(float)

    def push(self, label: str) -> None:
        self.stack.append([label, time.perf_counter(), 0.0])

    def pop(self) -> None:
        label, start, children = self.stack.pop()
        elapsed = time.perf_counter() - start
        self.times[label] += elapsed - children
        if self.stack:
            self.stack[-1][2] += elapsed

    @contextlib.contextmanager
    def span(self, label: str) -> Iterator[None]:
        self.push(label)
        try:
            yield
        finally:
            self.pop()

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.span(label):
                return original(*args, **kwargs)

        setattr(owner, name, timed)


def instrument(catalog: Catalog, tracer: Tracer, sent: list[tuple[str, Any]]) -> None:
    """Timers around imgsearch's functions and the round trips of imgsearch.db.wire (not
    SQLAlchemy's cursor events: a listener on them sends every statement through SQLAlchemy, one
    round trip each, which is not how a search runs); ``sent`` gets each search's statements, in
    order (the deferred scope, the settings, the statement)."""
    py = "imgsearch Python"
    for owner, name in (
        (service, "search"),
        (service, "_run"),
        (routing.Router, "search"),
        (routing.Router, "_once"),
        (routing.Router, "_own_graph"),
        (strategy, "search_vector"),
    ):
        tracer.wrap(owner, name, py)
    tracer.wrap(queries.Query, "embed", "query vector check")
    tracer.wrap(strategy, "_result", "hits from rows")
    tracer.wrap(hybrid, "ranked", "hits from rows")
    engine = catalog.search_engine
    tracer.wrap(engine, "raw_connection", "pool")
    from sqlalchemy.pool.base import _ConnectionFairy

    tracer.wrap(_ConnectionFairy, "_checkin", "pool")
    tracer.wrap(engine.dialect, "do_commit", "round trip: COMMIT")
    for name in ("rows", "send"):  # a deferred statement is recorded with the one it goes with
        original = getattr(wire, name)

        def recorded(
            conn: Any, statement: Any, *args: Any, _original: Any = original, _name: str = name
        ) -> Any:
            sent.extend(wire.deferred(conn))
            if _name == "rows":  # what goes in its round trip: the deferred, the settings, it
                sent.extend(args[0] if args else ())
            sent.append(statement)
            with tracer.span("round trip: statement" if _name == "rows" else "round trip: settings"):
                return _original(conn, statement, *args)

        setattr(wire, name, recorded)


def explain(catalog: Catalog, calls: list[tuple[str, Any]]) -> tuple[float, float, str]:
    """PostgreSQL's planning and execution time of the search's statements (after its settings,
    in one transaction), and the plan of the last one."""
    planning = execution = 0.0
    plan = ""
    raw = catalog.search_engine.raw_connection()
    try:
        from imgsearch.db.vector_index import HalfvecBinaryDumper, HalfvecValue

        driver = raw.driver_connection
        driver.adapters.register_dumper(HalfvecValue, HalfvecBinaryDumper)  # type: ignore[union-attr]
        with driver.cursor() as cur:  # type: ignore[union-attr]
            for statement, params in calls:
                if statement.startswith("SELECT set_config"):
                    cur.execute(statement, params or None)
                    continue
                cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", params)
                lines = [r[0] for r in cur.fetchall()]
                for line in lines:
                    if line.startswith("Planning Time:"):
                        planning += float(line.split()[2])
                    elif line.startswith("Execution Time:"):
                        execution += float(line.split()[2])
                plan = "\n".join(lines)
        driver.rollback()  # type: ignore[union-attr]
    finally:
        raw.close()
    return planning, execution, plan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--filters", default=";".join(FILTERS), help="which filters, by name, separated by semicolons"
    )
    parser.add_argument("--plans", action="store_true", help="print each filter's EXPLAIN output")
    parser.add_argument("--py-spy", action="store_true", help="also sample the searches with py-spy")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data)
    cases = query_cases(data, labels, args.queries)
    tracer = Tracer()
    rows: list[str] = []
    with Catalog.open(
        url, model="google/siglip-base-patch16-224", settings=Settings(record_queries=False)
    ) as catalog:
        sent: list[tuple[str, Any]] = []
        for q, filters in cases:  # warm: caches, plans, the pool
            for _name, kwargs in filters:
                catalog.search(vector=q, k=10, **kwargs)
        # before the timers go in (they cost a few microseconds each)
        alone = {name: python_alone(catalog, cases, name) for name in args.filters.split(";")}
        instrument(catalog, tracer, sent)
        for name in args.filters.split(";"):
            walls: list[float] = []
            parts: dict[str, list[float]] = defaultdict(list)
            server: list[tuple[float, float]] = []
            plan, statements = "", 0
            for round_ in range(args.rounds):
                for n in range(args.queries):
                    q, filters = cases[n]
                    kwargs = dict(filters)[name]
                    tracer.times.clear()
                    sent.clear()
                    start = time.perf_counter()
                    catalog.search(vector=q, k=10, **kwargs)
                    walls.append(time.perf_counter() - start)
                    for part in PARTS:
                        parts[part].append(tracer.times.get(part, 0.0))
                    if round_ == 0:
                        calls = list(sent)
                        statements = len(calls)
                        planning, execution, plan = explain(catalog, calls)
                        server.append((planning, execution))
            wall = statistics.median(walls) * 1000
            medians = {part: statistics.median(parts[part]) * 1000 for part in PARTS}
            pg_plan = statistics.median(p for p, _ in server)
            pg_exec = statistics.median(e for _, e in server)
            cells = " | ".join(f"{medians[p]:.2f}" for p in PARTS)
            rows.append(
                f"| {name} | {wall:.2f} | {cells} | {pg_plan:.2f} + {pg_exec:.2f} | "
                f"{sum(medians.values()) / wall:.0%} | {alone[name] * 1000:.3f} |"
            )
            print(
                f"  {name}: p50 {wall:.2f} ms, {statements} statements a search (with the settings)",
                flush=True,
            )
            if args.plans:
                print(plan)
        if args.py_spy:
            profile(catalog, cases)
    print()
    print(
        "| filter | p50 ms | "
        + " | ".join(PARTS)
        + " | PostgreSQL: planning + execution (EXPLAIN) | parts / p50 | Python alone |"
    )
    print("|---" * (len(PARTS) + 5) + "|")
    for row in rows:
        print(row)


def python_alone(catalog: Catalog, cases: list[Any], name: str, runs: int = 2000) -> float:
    """p50 seconds of ``catalog.search`` for the first query at filter ``name`` when every
    statement is answered with the rows it got the first time (wire.rows), nothing sent."""
    q, filters = cases[0]
    kwargs = dict(filters)[name]
    answers: list[Any] = []
    sent = wire.rows

    def remembered(conn: Any, statement: Any, before: Any = ()) -> Any:
        answers.append(sent(conn, statement, before))
        return answers[-1]

    wire.rows = remembered  # type: ignore[assignment]
    try:
        catalog.search(vector=q, k=10, **kwargs)
        first = list(answers)

        def replayed(conn: Any, statement: Any, before: Any = ()) -> Any:
            conn._take_deferred()  # the deferred scope went with the statement
            return next(replies)

        wire.rows = replayed  # type: ignore[assignment]
        times = []
        for _ in range(runs):
            replies = iter(first)
            start = time.perf_counter()
            catalog.search(vector=q, k=10, **kwargs)
            times.append(time.perf_counter() - start)
    finally:
        wire.rows = sent  # type: ignore[assignment]
    return statistics.median(times)


def profile(catalog: Catalog, cases: list[Any]) -> None:
    """py-spy's view of the same searches (near and far filters), top functions by own time."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        spy = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(os.getpid()), "--format", "raw", "-o", str(out)),
                *("--rate", "500", "--duration", "15", "--idle"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while spy.poll() is None:  # searches until py-spy has its 15 s (it writes when it stops)
            for q, filters in cases:
                for name, kwargs in filters:
                    if name in ("1% near, shop", "100% tenant"):
                        catalog.search(vector=q, k=10, **kwargs)
        if not out.exists():
            sys.exit(f"py-spy wrote nothing: {spy.stderr.read() if spy.stderr else ''}")
        own: dict[str, int] = defaultdict(int)
        total = 0
        for line in out.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            frames = stack.split(";")
            total += int(samples)
            own[frames[-1].split(" (")[0] if frames else "?"] += int(samples)
        waiting = own.get("Connection.wait", 0) / total
        print(f"\npy-spy, near filters: {waiting:.0%} of samples wait on the socket (the round trips),")
        print(f"{1 - waiting:.0%} run Python (timers' own cost included); own time by function:")
        for function, count in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
            print(f"  {count / total:6.1%}  {function}")


if __name__ == "__main__":
    main()
