"""Searches on a streaming hot standby against the primary, and the replication lag of uploads.

    .venv/bin/python bench/search/replicas.py --rows 50000 --queries 300 --upload-seconds 30 [--data calibrated]

A primary (an embedded server of its own under ``IMGSEARCH_HOME``/replicas) with ``--rows``
768-d vectors in 200 clusters, and one hot standby of it (``pg_basebackup -R``, streaming
replication), on this machine:

1. **Search**: p50 of the same vector searches (unfiltered, a tenant, a category) through a
   catalog whose searches go to the standby and through one on the primary, taking turns. Both
   servers share this machine's two cores and page cache, which a standby on hardware of its own
   doesn't.
2. **CPU per search**: the standby's PostgreSQL processes' CPU time (``/proc``) over ``--queries``
   searches, per search: what sizes a replica fleet (docs/scaling.md).
3. **Lag under an upload stream**: bring-your-own vectors in batches of ``--batch`` for
   ``--upload-seconds``, as fast as ``add_many`` goes; for each batch, the time from its commit to
   the standby replaying its WAL position (p50, p99, max), rows/s, and WAL bytes per row (the
   HNSW inserts write most of it).

The figure it produces: docs/benchmarks.md, "Searches on a standby" (and docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import DATA, calibrated_with_labels
from _data import clustered

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.settings import Settings
from tests.helpers import Standby

MODEL = "google/siglip-base-patch16-224"  # 768-d; vectors only, the weights are never loaded


def cpu_seconds(data_dir: Path) -> float:
    """User + system CPU of every process of the server whose data directory is ``data_dir``."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--upload-seconds", type=float, default=30)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    root = Settings().home / "replicas"
    if root.exists():
        for data in root.glob("standby/data"):
            if (data / "postmaster.pid").exists():
                Standby(data, data.parent / "log").stop()
        embedded.stop(root / "primary")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    primary = embedded.ensure_started(root / "primary")
    standby = None
    try:
        data = (
            calibrated_with_labels(args.rows, 768, seed=3)[0]
            if args.data == "calibrated"
            else clustered(args.rows, 768, clusters=200, seed=3)
        )
        with Catalog.open(primary, model=MODEL, settings=Settings(model=MODEL)) as catalog:
            print(f"importing {args.rows} rows ...", flush=True)
            catalog.import_vectors(
                (
                    {
                        "embedding": data[i],
                        "tenant": f"shop{i % 10}",
                        "product_id": f"p{i}",
                        "category": f"c{i % 50}",
                        "price": float(i % 300),
                    }
                    for i in range(args.rows)
                ),
                progress=False,
            )
            with catalog.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        print("copying the primary to a standby (pg_basebackup) ...", flush=True)
        standby = Standby.copy_of(str(make_url(primary).query["host"]), root / "standby")
        report = run(primary, standby, args)
    finally:
        if standby is not None and standby.running():
            standby.stop()
        embedded.stop(root / "primary")
    show(report, args)


def run(primary: str, standby: Standby, args: argparse.Namespace) -> dict[str, float]:
    settings = Settings(model=MODEL)
    rng = np.random.default_rng(7)
    queries = [q / np.linalg.norm(q) for q in rng.standard_normal((args.queries + 20, 768))]
    filters = [{}, {"tenant": "shop3"}, {"category": "c7"}]
    report: dict[str, float] = {}
    with (
        Catalog.open(primary, settings=settings, replicas=[standby.url()]) as routed,
        Catalog.open(primary, settings=settings) as alone,
    ):
        assert routed.replicas is not None
        for i in range(20):  # warm both: pools, prepared statements, the standby's cache
            routed.search(vector=queries[i], k=10, **filters[i % 3])
            alone.search(vector=queries[i], k=10, **filters[i % 3])
        print(f"1. {args.queries} searches each way ...", flush=True)
        times: dict[str, list[float]] = {"replica": [], "primary": []}
        for i in range(20, 20 + args.queries):
            ways = [("replica", routed), ("primary", alone)]
            for name, catalog in ways if i % 2 else ways[::-1]:
                start = time.perf_counter()
                catalog.search(vector=queries[i], k=10, **filters[i % 3])
                times[name].append(time.perf_counter() - start)
        report["replica_p50"] = statistics.median(times["replica"]) * 1000
        report["primary_p50"] = statistics.median(times["primary"]) * 1000
        assert routed.replicas.members[0].searches >= args.queries

        print("2. CPU per search on the standby ...", flush=True)
        before = cpu_seconds(standby.data)
        start = time.perf_counter()
        for i in range(20, 20 + args.queries):
            routed.search(vector=queries[i], k=10, **filters[i % 3])
        wall = time.perf_counter() - start
        report["cpu_ms_per_search"] = (cpu_seconds(standby.data) - before) / args.queries * 1000
        report["wall_ms_per_search"] = wall / args.queries * 1000

        print(f"3. uploads for {args.upload_seconds:g} s, lag on the standby ...", flush=True)
        report.update(lag(primary, standby, alone, args))
    return report


def lag(primary: str, standby: Standby, catalog: Catalog, args: argparse.Namespace) -> dict[str, float]:
    commits: list[tuple[float, str]] = []  # (commit time, the primary's WAL position after it)
    replayed: list[tuple[float, str]] = []  # (time, the standby's replay position)
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(
            host=str(standby.data), user="postgres", dbname="imgsearch", autocommit=True
        ) as conn:
            while not stop.is_set():
                replayed.append(
                    (time.perf_counter(), conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0])
                )
                time.sleep(0.002)

    host = make_url(primary).query["host"]
    with psycopg.connect(host=host, user="postgres", dbname="imgsearch", autocommit=True) as conn:
        watcher = threading.Thread(target=watch)
        watcher.start()
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        rng = np.random.default_rng(11)
        rows, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.upload_seconds:
            batch = rng.standard_normal((args.batch, 768))
            catalog.add_many(
                {"embedding": v, "tenant": "shop0", "product_id": f"u{rows + j}", "category": "c1"}
                for j, v in enumerate(batch)
            )
            commits.append(
                (time.perf_counter(), conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
            )
            rows += args.batch
        elapsed = time.perf_counter() - started
        end_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        wal_bytes = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (end_lsn, start_lsn)).fetchone()[0]
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline and (
            not replayed or lsn_value(replayed[-1][1]) < lsn_value(end_lsn)
        ):
            time.sleep(0.05)
        stop.set()
        watcher.join()
    delays = []
    position = 0
    for committed, lsn in commits:
        target = lsn_value(lsn)
        while position < len(replayed) and lsn_value(replayed[position][1]) < target:
            position += 1
        if position < len(replayed):
            delays.append(max(0.0, replayed[position][0] - committed))
    return {
        "rows_per_s": rows / elapsed,
        "wal_bytes_per_row": float(wal_bytes) / rows,
        "lag_p50_ms": float(np.percentile(delays, 50)) * 1000,
        "lag_p99_ms": float(np.percentile(delays, 99)) * 1000,
        "lag_max_ms": max(delays) * 1000,
    }


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def show(report: dict[str, float], args: argparse.Namespace) -> None:
    print()
    print("| measure | replica | primary | ratio |")
    print("|---|---|---|---|")
    print(
        f"| search p50, {args.rows} rows (unfiltered, a tenant, a category in turn) "
        f"| {report['replica_p50']:.2f} ms | {report['primary_p50']:.2f} ms "
        f"| **{report['replica_p50'] / report['primary_p50']:.2f}x** |"
    )
    print(
        f"| PostgreSQL CPU per search on the standby | {report['cpu_ms_per_search']:.2f} ms "
        f"(wall {report['wall_ms_per_search']:.2f} ms) | | |"
    )
    print()
    print("| upload stream (add_many of bring-your-own vectors) | value |")
    print("|---|---|")
    print(f"| rows/s | {report['rows_per_s']:.0f} |")
    print(f"| WAL per row | {report['wal_bytes_per_row'] / 1024:.1f} KiB |")
    print(
        f"| lag from commit to replay on the standby: p50 / p99 / max | {report['lag_p50_ms']:.1f} / "
        f"{report['lag_p99_ms']:.1f} / {report['lag_max_ms']:.1f} ms |"
    )


if __name__ == "__main__":
    main()
