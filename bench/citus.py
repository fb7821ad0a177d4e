"""Citus mode against one node: a shop's search through the coordinator, uploads through it, a
shard move's time per GB, and a sizing table from the measured costs.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/citus.py --rows 60000 --shops 20 --queries 300 [--data calibrated]

Two catalogs with the same ``--rows`` 768-d vectors (200 clusters) across ``--shops`` shops and
20 categories, loaded with ``import_vectors``: one on a node of its own (the embedded server of
``IMGSEARCH_HOME``, database ``bench_citus``) and one distributed over a cluster of a coordinator
and 2 workers on this machine (``tests/citus.py``, durable settings: fsync on, 1 GB of shared
buffers each). All the servers share this box's two cores.

1. **Search**: p50 of the same shop searches (k=10: a shop, a shop and a category), one node and
   the cluster taking turns: the cluster over one node is the router's overhead (target 1.3x).
   Its floor: the same statements (scope, settings, search) replayed bare through psycopg on
   each; and one product read by its key, through the coordinator and on one node: the hop
   every routed statement pays.
2. **Uploads**: ``add_many`` of bring-your-own vectors, batches of ``--batch``, for
   ``--upload-seconds`` on each: rows/s. And the bulk import's rows/s from the load.
3. **A shard move**: the largest shop's shard group moved to the other worker
   (``citus_move_shard_placement``, logical), idle: seconds per GB of the group. Then moved back
   while that shop's uploads (batches of 10) and searches run in two threads: the move's seconds
   under traffic, the searches' p50 during the move against the same traffic's p50 just before
   it, failed searches and uploads (0 expected), and every acknowledged upload found after.
4. **Sizing**: bytes a row takes on the shards (heap, TOAST and indexes, the HNSW graph counted
   apart), and what those figures say a node holds and 100M images need.

The figures it produces: docs/scaling.md, "Citus: measured", and ``--plot`` (docs/citus_benchmark.png).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "search"))
sys.path.insert(0, str(Path(__file__).parents[1]))

from _catalog import DATA, calibrated_with_labels
from _data import clustered, fresh_database
from search import bare_connection, raw_form, replay
from sqlalchemy import event

from imgsearch import Catalog
from imgsearch.settings import Settings
from tests.citus import CONF, CitusCluster, built

MODEL = "google/siglip-base-patch16-224"  # 768-d; vectors only, the weights are never loaded
DURABLE = CONF.replace("fsync = off", "fsync = on").replace("synchronous_commit = off", "synchronous_commit = on")
DURABLE = DURABLE.replace("full_page_writes = off", "full_page_writes = on").replace(
    "shared_buffers = 128MB", "shared_buffers = 1GB"
)
GIB = 1024**3


def rows_of(data: np.ndarray, shops: int) -> Any:
    for i, v in enumerate(data):
        yield {"embedding": v, "tenant": f"shop{i % shops}", "product_id": f"p{i}", "category": f"c{i % 20}",
               "price": float(i % 300)}  # fmt: skip


def load(url: str, data: np.ndarray, shops: int) -> float:
    """Import the rows; rows/s."""
    with Catalog.open(url, model=MODEL, settings=Settings(model=MODEL)) as catalog:
        started = time.perf_counter()
        catalog.import_vectors(rows_of(data, shops), progress=False)
        seconds = time.perf_counter() - started
        with catalog.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    return len(data) / seconds


def searches(single: str, cluster: str, shops: int, queries: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    vectors = [q / np.linalg.norm(q) for q in rng.standard_normal((queries + 20, 768))]
    kinds = [lambda i: {"tenant": f"shop{i % shops}"}, lambda i: {"tenant": f"shop{i % shops}", "category": f"c{i % 20}"}]
    settings = Settings(model=MODEL, record_queries=False)
    times: dict[str, list[float]] = {"one node": [], "cluster": [], "one node floor": [], "cluster floor": []}
    hops: dict[str, list[float]] = {"one node": [], "cluster": []}
    with Catalog.open(single, settings=settings) as one, Catalog.open(cluster, settings=settings) as many:
        ways = [("one node", one), ("cluster", many)]
        for i in range(20):  # warm: pools, plans, the caches
            for _, catalog in ways:
                catalog.search(vector=vectors[i], k=10, **kinds[i % 2](i))
        # the floor: each search's statements as imgsearch sent them (the tenant's scope and the
        # settings included), replayed on a bare psycopg connection (bench/search/search.py's)
        calls = {name: captured(catalog, vectors, kinds, queries) for name, catalog in ways}
        bare = {name: bare_connection(catalog.engine.url) for name, catalog in ways}
        for i in range(20, 20 + queries):
            for name, catalog in ways if i % 2 else ways[::-1]:
                filters = kinds[i % 2](i)
                started = time.perf_counter()
                catalog.search(vector=vectors[i], k=10, **filters)
                times[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                (replay if name == "one node" else replay_on_coordinator)(bare[name], calls[name][i])
                times[f"{name} floor"].append(time.perf_counter() - started)
        for conn in bare.values():
            conn.close()
        for name, catalog in ways:  # the hop alone: one shop's product by its key, through the same pool
            with catalog.engine.connect() as conn:
                keys = conn.execute(text("SELECT tenant, min(id) FROM imgsearch.products GROUP BY 1")).all()
                for i in range(queries):
                    tenant, key = keys[i % len(keys)]
                    started = time.perf_counter()
                    conn.execute(
                        text("SELECT 1 FROM imgsearch.products WHERE tenant = :t AND id = :id"), {"t": tenant, "id": key}
                    ).all()
                    hops[name].append(time.perf_counter() - started)
    report = {f"{name} p50": statistics.median(values) * 1000 for name, values in times.items()}
    report.update({f"{name} hop": statistics.median(values) * 1000 for name, values in hops.items()})
    return report


def replay_on_coordinator(conn: psycopg.Connection[Any], calls: list[tuple[str, Any]]) -> None:
    """The floor on a coordinator: a search's statements as imgsearch sends them there
    (imgsearch.db.wire: one by one, not pipelined, whose settings come as ``SET LOCAL`` commands,
    several to a statement, which only the simple protocol takes), in one transaction; the last
    statement's rows read."""
    with conn.transaction():
        for statement, params in calls:
            if not params:
                conn.execute(statement.encode(), prepare=False)  # no parameters: the simple protocol
            else:
                psycopg.RawCursor(conn).execute(*raw_form(statement, params), prepare=True).fetchall()


def captured(catalog: Catalog, vectors: list[np.ndarray], kinds: list[Any], queries: int) -> dict[int, Any]:
    """Each search's statements, with their values, as the catalog sends them (an untimed pass)."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    found = {}
    event.listen(catalog.search_engine, "before_cursor_execute", record)
    try:
        for i in range(20, 20 + queries):
            sent.clear()
            catalog.search(vector=vectors[i], k=10, **kinds[i % 2](i))
            found[i] = list(sent)
    finally:
        event.remove(catalog.search_engine, "before_cursor_execute", record)
    return found


def uploads(url: str, seconds: float, batch: int, label: str) -> float:
    rng = np.random.default_rng(11)
    rows, started = 0, time.perf_counter()
    with Catalog.open(url, settings=Settings(model=MODEL)) as catalog:
        while time.perf_counter() - started < seconds:
            vectors = rng.standard_normal((batch, 768)).astype(np.float32)
            catalog.add_many(
                {"embedding": v, "tenant": f"shop{(rows // batch) % 7}", "product_id": f"{label}{rows + j}"}
                for j, v in enumerate(vectors)
            )
            rows += batch
    return rows / (time.perf_counter() - started)


@dataclass
class Traffic:
    """A shop's uploads (batches of 10) and searches (k=10), in two threads, until stopped."""

    url: str
    shop: str
    query: np.ndarray
    acknowledged: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when it answered, ms)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def upload(self, catalog: Catalog) -> None:
        rng = np.random.default_rng(17)
        n = 0
        while not self.stop.is_set():
            ids = [f"traffic{n + i}" for i in range(10)]
            vectors = rng.standard_normal((10, 768)).astype(np.float32)
            try:
                catalog.add_many(
                    {"embedding": v, "tenant": self.shop, "product_id": p} for p, v in zip(ids, vectors, strict=True)
                )
            except Exception as exc:  # counted and reported: the figure is how many
                self.failures.append(f"upload: {str(exc).splitlines()[0][:120]}")
            else:
                self.acknowledged.extend(ids)
            n += 10

    def search(self, catalog: Catalog) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                catalog.search(vector=self.query, tenant=self.shop, k=10)
            except Exception as exc:
                self.failures.append(f"search: {str(exc).splitlines()[0][:120]}")
            else:
                self.latencies.append((time.monotonic(), (time.perf_counter() - started) * 1000))

    def __enter__(self) -> Traffic:
        self.catalog = Catalog.open(self.url, settings=Settings(model=MODEL))
        self.threads = [
            threading.Thread(target=self.upload, args=(self.catalog,)),
            threading.Thread(target=self.search, args=(self.catalog,)),
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.catalog.close()

    def p50(self, start: float, end: float) -> float:
        return statistics.median(ms for t, ms in self.latencies if start <= t <= end)


def _move(conn: psycopg.Connection[Any], shard: int, source: int, target: int) -> float:
    # the last move's shard, left on its source until Citus's deferred cleanup drops it, would
    # refuse a move back there ("the orphaned shard ... could not be cleaned up")
    conn.execute("CALL citus_cleanup_orphaned_resources()")
    started = time.perf_counter()
    conn.execute(
        "SELECT citus_move_shard_placement(%s, '127.0.0.1', %s, '127.0.0.1', %s, shard_transfer_mode => 'force_logical')",
        [shard, source, target],
    )
    return time.perf_counter() - started


def move(
    cluster: CitusCluster, database: str, url: str, before_seconds: float = 10
) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """The largest shop's shard group moved to the other worker idle, then back under the shop's
    traffic: seconds, bytes, and what the traffic saw; and its searches' (seconds from the busy
    move's start, ms)."""
    with cluster.coordinator.connect(database) as conn:
        shop = conn.execute(
            "SELECT tenant FROM imgsearch.embeddings GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]
        shard, source = conn.execute(
            "SELECT shardid, nodeport FROM citus_shards"
            " WHERE shardid = get_shard_id_for_distribution_column('imgsearch.products', %s::text)",
            [shop],
        ).fetchone()
        group = conn.execute(
            "SELECT sum(shard_size) FROM citus_shards WHERE nodeport = %s AND shardid IN ("
            " SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_partition p USING (logicalrelid)"
            " WHERE p.colocationid = (SELECT colocationid FROM pg_dist_partition"
            "                         WHERE logicalrelid = 'imgsearch.products'::regclass)"
            "   AND s.shardminvalue = (SELECT shardminvalue FROM pg_dist_shard WHERE shardid = %s))",
            [source, shard],
        ).fetchone()[0]
        target = next(w.port for w in cluster.workers if w.port != source)
        idle = _move(conn, shard, source, target)
        query = np.random.default_rng(23).standard_normal(768).astype(np.float32)
        with Traffic(url, shop, query) as traffic:
            time.sleep(before_seconds)
            started = time.monotonic()
            busy = _move(conn, shard, target, source)
            ended = time.monotonic()
            time.sleep(1)
        found = conn.execute(
            "SELECT count(*) FROM imgsearch.products WHERE tenant = %s AND product_id = ANY(%s)",
            [shop, traffic.acknowledged],
        ).fetchone()[0]
    # the searches that overlapped the move: answered after it started, sent before it ended
    during = [ms for t, ms in traffic.latencies if t >= started and t - ms / 1000 <= ended]
    timeline = [(t - started, ms) for t, ms in traffic.latencies]
    return {
        "move seconds": idle, "move bytes": float(group or 0), "busy move seconds": busy,
        "searches before p50": traffic.p50(started - before_seconds, started),
        "searches during p50": statistics.median(during) if during else float("nan"),
        "searches during max": max(during, default=float("nan")),
        "searches during": len(during), "failures": len(traffic.failures),
        "acknowledged": len(traffic.acknowledged), "lost": len(traffic.acknowledged) - found,
    }, timeline  # fmt: skip


def sizes(cluster: CitusCluster, database: str) -> dict[str, float]:
    """Bytes per embedding row on the workers: every shard of the catalog (heap, TOAST, indexes),
    and the HNSW graphs' shards apart."""
    with cluster.coordinator.connect(database) as conn:
        rows = conn.execute("SELECT count(*) FROM imgsearch.embeddings").fetchone()[0]
        model = conn.execute("SELECT id FROM imgsearch.models WHERE active").fetchone()[0]
        everything = conn.execute(
            "SELECT sum(shard_size) FROM citus_shards WHERE table_name::text LIKE 'imgsearch.%%'"
        ).fetchone()[0]
        graphs = conn.execute(
            "SELECT sum(result::bigint) FROM run_command_on_shards('imgsearch.embeddings', %s) WHERE success",
            [f"SELECT pg_relation_size(to_regclass(replace('%s', 'embeddings_', 'embeddings_hnsw_m{int(model)}_')))"],
        ).fetchone()[0]
    return {"bytes per row": float(everything) / rows, "hnsw bytes per row": float(graphs) / rows, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--shops", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--upload-seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--plot", default="docs/citus_benchmark.png")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()
    if not built():
        sys.exit("bench/citus.py: Citus is not built into the embedded server: run `make citus`")

    home = Settings().home
    root = home / "citus-bench"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    root.chmod(0o755)
    single = fresh_database(home, "bench_citus")
    cluster = CitusCluster.start(root / "cluster", conf=DURABLE)
    report: dict[str, float] = {}
    timeline: list[tuple[float, float]] = []
    try:
        url = cluster.create_catalog("bench_citus")
        data = (
            calibrated_with_labels(args.rows, 768, seed=3)[0]
            if args.data == "calibrated"
            else clustered(args.rows, 768, clusters=200, seed=3)
        )
        print(f"importing {args.rows} rows into each ...", flush=True)
        report["import one node"] = load(single, data, args.shops)
        report["import cluster"] = load(url, data, args.shops)
        print(f"1. {args.queries} shop searches each way ...", flush=True)
        report.update(searches(single, url, args.shops, args.queries))
        print(f"2. uploads for {args.upload_seconds:g} s each ...", flush=True)
        report["uploads one node"] = uploads(single, args.upload_seconds, args.batch, "one")
        report["uploads cluster"] = uploads(url, args.upload_seconds, args.batch, "many")
        print("3. sizes, then a shard move idle and one back under traffic ...", flush=True)
        report.update(sizes(cluster, "bench_citus"))
        moved, timeline = move(cluster, "bench_citus", url)
        report.update(moved)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        with psycopg.connect(
            host=make_url(single).query["host"], user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_citus")
    show(report, args)
    plot(report, timeline, Path(args.plot))


def plot(r: dict[str, float], timeline: list[tuple[float, float]], path: Path) -> None:
    """Left: a shop's search p50, one node against the cluster, and their floors. Right: the moved
    shop's searches during the busy move (shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    names = ["one node", "cluster"]
    left.bar([0, 1], [r["one node p50"], r["cluster p50"]], width=0.4, label="imgsearch")
    left.bar([0.4, 1.4], [r["one node floor p50"], r["cluster floor p50"]], width=0.4, label="floor (bare)")
    left.set_xticks([0.2, 1.2], names)
    left.set_ylabel("a shop's search p50, ms")
    left.legend(fontsize=8)
    right.scatter([t for t, _ in timeline], [ms for _, ms in timeline], s=3)
    right.axvspan(0, r["busy move seconds"], color="orange", alpha=0.25, label="the shop's shards moving")
    right.set_xlabel("seconds from the move's start")
    right.set_ylabel("the shop's searches, ms")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle(f"Citus: {r['rows']:.0f} rows; a shop's search and a shard move under uploads and searches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def show(r: dict[str, float], args: argparse.Namespace) -> None:
    print()
    print(f"{args.rows} rows of 768-d vectors, {args.shops} shops, k=10")
    print()
    print("| measure | one node | cluster (coordinator + 2 workers) | cluster / one node |")
    print("|---|---|---|---|")
    print(f"| a shop's search p50 (a shop; a shop and a category, in turn) | {r['one node p50']:.2f} ms "
          f"| {r['cluster p50']:.2f} ms | **{r['cluster p50'] / r['one node p50']:.2f}x** |")  # fmt: skip
    print(f"| floor: the same statements replayed bare (psycopg, prepared) | {r['one node floor p50']:.2f} ms "
          f"| {r['cluster floor p50']:.2f} ms | {r['cluster floor p50'] / r['one node floor p50']:.2f}x |")  # fmt: skip
    print(f"| a routed statement's hop: one product by its key | {r['one node hop']:.2f} ms "
          f"| {r['cluster hop']:.2f} ms | +{r['cluster hop'] - r['one node hop']:.2f} ms |")  # fmt: skip
    print(f"| imgsearch / floor | {r['one node p50'] / r['one node floor p50']:.2f}x "
          f"| {r['cluster p50'] / r['cluster floor p50']:.2f}x | |")  # fmt: skip
    print(f"| uploads (`add_many`, batches of {args.batch}) | {r['uploads one node']:.0f} rows/s "
          f"| {r['uploads cluster']:.0f} rows/s | {r['uploads cluster'] / r['uploads one node']:.2f}x |")  # fmt: skip
    print(f"| bulk import (`import_vectors`) | {r['import one node']:.0f} rows/s | {r['import cluster']:.0f} rows/s "
          f"| {r['import cluster'] / r['import one node']:.2f}x |")  # fmt: skip
    gb = r["move bytes"] / GIB
    print()
    print("| shard move (the largest shop's group, logical) | idle | under the shop's uploads and searches |")
    print("|---|---|---|")
    print(f"| bytes moved | {r['move bytes'] / 1024**2:.0f} MiB | the same, back, and the rows uploaded meanwhile |")
    print(f"| time | {r['move seconds']:.1f} s | {r['busy move seconds']:.1f} s |")
    print(f"| per GB | **{r['move seconds'] / gb:.0f} s/GB** | **{r['busy move seconds'] / gb:.0f} s/GB** |")
    print(f"| the shop's search p50 during the move / just before it | | {r['searches during p50']:.1f} / "
          f"{r['searches before p50']:.1f} ms = **{r['searches during p50'] / r['searches before p50']:.2f}x** "
          f"({r['searches during']:.0f} searches) |")  # fmt: skip
    print(f"| the slowest search during the move (its cutover waits for the last writes) | | {r['searches during max']:.0f} ms |")
    print(f"| failed searches and uploads | | {r['failures']:.0f} |")
    print(f"| acknowledged uploads (batches of 10) / lost | | {r['acknowledged']:.0f} / {r['lost']:.0f} |")
    if r["failures"] or r["lost"]:
        sys.exit("bench/citus.py: the move under traffic failed searches or lost uploads")
    per_row, hnsw = r["bytes per row"], r["hnsw bytes per row"]
    print()
    print("| sizing, from the measured bytes per row | value |")
    print("|---|---|")
    print(f"| on the shards, per 768-d row (heap, TOAST, indexes) | {per_row / 1024:.1f} KiB, of which HNSW {hnsw / 1024:.1f} KiB |")
    shop = 100_000
    print(f"| a shop of 100k images | {shop * per_row / GIB:.2f} GiB (HNSW {shop * hnsw / GIB:.2f} GiB) |")
    ram = 24 * GIB * 0.5  # half a 24 GiB node for the hot set: the graphs and the heap they visit
    print(f"| shops of 100k per node of this box's size (24 GiB, half for the hot set: the HNSW graphs) | {ram / (shop * hnsw):.0f} |")
    total = 100_000_000
    for nodes in (4, 8, 16):
        print(f"| 100M images on {nodes} workers: per node, RAM for the graphs / disk | "
              f"{total * hnsw / nodes / GIB:.0f} GiB / {total * per_row / nodes / GIB:.0f} GiB |")  # fmt: skip


if __name__ == "__main__":
    main()
