"""The HTTP service against the library it serves, in one run, on one catalog.

    .venv/bin/python bench/server/serve.py --rows 100000 --queries 300 --load-seconds 60

1. **Latency**: a shop's vector search (its key, so its tenant, under row-level security), p50
   over the HTTP API (``POST /v1/search`` on a keep-alive connection, JSON in and out: what a
   backend in another language pays) against the same search in process (``catalog.search``),
   each query run both ways back to back, alternating which goes first. Also the floor, the bare
   HTTP round trip of ``GET /healthz`` (an async route: no thread, no database), and the same pair
   for an admin key (no tenant, an unfiltered search). Target: HTTP p50 within 1.5x in process.
2. **Load**: 16 client processes, each a closed loop of vector searches for ``--load-seconds``:
   errors (target 0), requests/s, p50 and p99 (target p99 <= 5x p50), and the server's RSS each
   second (target: growth <= 10% from the 10th second to the last).
3. **Micro-batching**: 16 client processes send distinct texts (no cache hits) for
   ``--text-seconds`` to a server whose queries share forward passes (``IMGSEARCH_QUERY_BATCH_SIZE``
   16) and to one that runs them one at a time (1), on the tests' tiny SigLIP and on a base-size
   SigLIP (``SiglipConfig()``'s defaults, random weights: speed, not quality). Target: batching
   >= 1.5x the queries/s of one at a time, for both.

The catalog is bench/search/search.py's (``bench_search`` in ``IMGSEARCH_HOME``'s embedded server: 100k
768-d vectors in 200 clusters, one tenant), loaded first if missing. Writes a table to stdout and
a plot to docs/serve_benchmark.png.

The figure it produces: docs/benchmarks.md, "The HTTP service" (its table and
docs/serve_benchmark.png).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import DATA, query_cases, stored_catalog
from _data import fresh_database
from _models import build_models

from imgsearch import Catalog
from imgsearch.access import keys
from imgsearch.db.engine import make_engine
from imgsearch.settings import Settings

CLIENTS = 16
ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(
    database_url: str, model: str, log: Path, **env: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``imgsearch serve`` on a free port, until the block ends."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    environment.update(
        IMGSEARCH_DATABASE_URL=database_url,
        IMGSEARCH_MODEL=model,
        IMGSEARCH_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        **env,
    )
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "serve", "--port", str(port)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"imgsearch serve exited: see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"imgsearch serve did not get ready: see {log}")
            time.sleep(0.2)
        yield port, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def bare_server(log: Path) -> Iterator[int]:
    """bench/server/_bare.py on uvicorn, until the block ends."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(Path(__file__).parent),
                "_bare:app",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the bare app did not start: see {log}") from None
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


class Client:
    """One keep-alive HTTP/1.1 connection, as a backend's HTTP client pool would hold."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def search(self, body: dict[str, Any] | bytes) -> int:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request("POST", "/v1/search", body=payload, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def health(self) -> None:
        self.conn.request("GET", "/healthz")
        self.conn.getresponse().read()


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- 1. latency ---------------------------------------------------------------------------------


def latency(
    catalog: Catalog, port: int, bare_port: int, tenant_key: str, admin_key: str, queries: list[list[float]]
) -> dict[str, Any]:
    """p50 of each way. The ways take turns, in an order that rotates, and each search has a
    vector of its own: a vector searched just before finds its HNSW path in the CPU caches and
    runs up to 2x faster (bench/search/search.py). HTTP request bodies are encoded before the clock
    starts, as load generators send them; "http, json" is the shop's search with Python's
    ``json.dumps`` of the body on the clock too."""
    shop, admin, bare = Client(port, tenant_key), Client(port, admin_key), Client(bare_port, "none")
    ways = {
        "http": lambda q, body: shop.search(body),
        "library": lambda q, body: catalog.search(vector=q, tenant="acme", k=10),
        "http admin": lambda q, body: admin.search(body),
        "library admin": lambda q, body: catalog.search(vector=q, k=10),
        "http, json": lambda q, body: shop.search({"vector": q, "k": 10, "total": False}),
        # HTTP counts the whole match set by default (issue 43); the library doesn't
        "http, total": lambda q, body: shop.search({"vector": q, "k": 10}),
        "healthz": lambda q, body: shop.health(),
        "bare": lambda q, body: bare.search(body),
    }
    names = list(ways)
    # the same search as the library's: no total (HTTP's default counts the match set, its own row)
    bodies = [json.dumps({"vector": q, "k": 10, "total": False}).encode() for q in queries]
    for i in range(2 * len(names)):  # warm both sides
        for name in names:
            ways[name](queries[i], bodies[i])
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = (len(queries) - 2 * len(names)) // len(names)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for position, name in enumerate(order):
            index = 2 * len(names) + r * len(names) + position
            start = time.perf_counter()
            ways[name](queries[index], bodies[index])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


# -- 2. load ------------------------------------------------------------------------------------


def load_client(port: int, key: str, queries: list[list[float]], seconds: float, seed: int, out: Any) -> None:
    client = Client(port, key)
    rng = np.random.default_rng(seed)
    bodies = [json.dumps({"vector": q, "k": 10, "total": False}).encode() for q in queries]
    latencies, errors, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        body = bodies[int(rng.integers(len(bodies)))]
        t = time.perf_counter()
        try:
            status = client.search(body)
        except OSError:
            status = 0
            client = Client(port, key)
        if status == 200:
            latencies.append((t - started, time.perf_counter() - t))
        else:
            errors += 1
    out.put((latencies, errors))


def rss_mib(pid: int) -> float:
    """Resident memory of the server and its children, MiB."""
    total = 0
    for proc in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def load(port: int, pid: int, key: str, queries: list[list[float]], seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [
        context.Process(target=load_client, args=(port, key, queries, seconds, i, out))
        for i in range(CLIENTS)
    ]
    for proc in procs:
        proc.start()
    rss = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        rss.append((time.perf_counter() - started, rss_mib(pid)))
        time.sleep(1)
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    samples = [latency for latencies, _ in results for _, latency in latencies]
    at_10 = min((mib for second, mib in rss if second >= 10), default=rss[0][1])
    return {
        "requests": len(samples),
        "errors": sum(errors for _, errors in results),
        "rps": len(samples) / seconds,
        "p50": p(samples, 50) * 1000,
        "p99": p(samples, 99) * 1000,
        "rss": rss,
        "rss_growth": rss[-1][1] / at_10 - 1,
        "per_second": [
            sum(1 for latencies, _ in results for second, _ in latencies if int(second) == s)
            for s in range(int(seconds))
        ],
    }


# -- 3. micro-batching --------------------------------------------------------------------------

WORDS = [
    "red",
    "blue",
    "green",
    "leather",
    "cotton",
    "summer",
    "winter",
    "dress",
    "shoe",
    "bag",
    "lamp",
    "mug",
    "shirt",
    "wooden",
    "steel",
]


def text_client(port: int, key: str, seconds: float, seed: int, out: Any) -> None:
    client = Client(port, key)
    rng = np.random.default_rng(seed)
    done, errors, count, started = 0, 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += 1
        text = " ".join(rng.choice(WORDS, 4)) + f" {seed}-{count}"  # never twice: no cache hits
        if client.search({"text": text, "k": 10}) == 200:
            done += 1
        else:
            errors += 1
    out.put((done, errors))


def text_throughput(port: int, key: str, seconds: float) -> tuple[float, int]:
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    warm = Client(port, key)
    warm.search({"text": "warm the model up", "k": 1})
    procs = [context.Process(target=text_client, args=(port, key, seconds, i, out)) for i in range(CLIENTS)]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(done for done, _ in results) / seconds, sum(errors for _, errors in results)


def model_database(home: Path, name: str, model: Path) -> str:
    """A small catalog of its own for ``model`` (the text benchmark's searches need hits, not many)."""
    database_url = fresh_database(home, name)
    with Catalog.open(database_url, model=str(model), settings=Settings(model=str(model))) as catalog:
        rng = np.random.default_rng(0)
        catalog.add_many(
            {
                "embedding": rng.standard_normal(catalog.dim),
                "tenant": "acme",
                "product_id": f"p{i}",
                "category": "c",
            }
            for i in range(2000)
        )
    return database_url


def forward_ceiling(model: Path, rounds: int = 8) -> tuple[float, float]:
    """In process, no server: a text forward pass's cost per query alone and in a batch of 16
    (ms), taking turns. Their ratio is the most micro-batching can gain on the model's side."""
    from imgsearch.embed.model import Embedder

    embedder = Embedder(str(model), device="cpu")
    embedder.embed_texts(["warm up"] * 4)
    alone, batched = [], []
    for r in range(rounds):
        start = time.perf_counter()
        for i in range(CLIENTS):
            embedder.embed_texts([f"alone {r} {i}"])
        alone.append((time.perf_counter() - start) / CLIENTS)
        start = time.perf_counter()
        embedder.embed_texts([f"batched {r} {i}" for i in range(CLIENTS)])
        batched.append((time.perf_counter() - start) / CLIENTS)
    return statistics.median(alone) * 1000, statistics.median(batched) * 1000


def vector_throughput(port: int, key: str, dim: int, seconds: float) -> float:
    """Searches by vector per second at the same concurrency: a text search is an embedding plus
    this search, so no way of embedding texts makes text searches faster than this."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    queries = [np.random.default_rng(i).standard_normal(dim).tolist() for i in range(64)]
    args = [(port, key, queries, seconds, i, out) for i in range(CLIENTS)]
    procs = [context.Process(target=load_client, args=a) for a in args]
    for proc in procs:
        proc.start()
    done = sum(len(latencies) for latencies, _ in (out.get() for _ in procs))
    for proc in procs:
        proc.join()
    return done / seconds


def text_part(home: Path, name: str, model: Path, seconds: float, rounds: int, log: Path) -> dict[str, Any]:
    """Part 3 for one model: one at a time and micro-batched, taking turns over ``rounds``, with
    the two ceilings measured in the same run."""
    database_url = model_database(home, f"bench_serve_{name}", model)
    engine = make_engine(database_url)
    key, _ = keys.create_key(engine, "acme")
    engine.dispose()
    print(f"3. text queries, {name} model: the forward pass in process ...", flush=True)
    forward = forward_ceiling(model)
    rates: dict[int, list[float]] = {1: [], CLIENTS: []}
    errors, vector = 0, []
    for r in range(rounds):
        for batch in (1, CLIENTS) if r % 2 == 0 else (CLIENTS, 1):
            print(f"3. text queries, {name} model, query batch size {batch}, round {r + 1} ...", flush=True)
            env = {"IMGSEARCH_QUERY_BATCH_SIZE": str(batch)}
            with server(database_url, str(model), log, **env) as (port, _):
                rate, failed = text_throughput(port, key, seconds)
                rates[batch].append(rate)
                errors += failed
                if batch == CLIENTS:
                    dim = 32 if name == "tiny" else 768
                    vector.append(vector_throughput(port, key, dim, seconds / 2))
    return {
        "alone": statistics.median(rates[1]),
        "batched": statistics.median(rates[CLIENTS]),
        "runs": rates,
        "errors": errors,
        "vector": statistics.median(vector),
        "forward": forward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--text-seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="part 3: runs of each setting, alternating")
    parser.add_argument("--skip-text", action="store_true", help="only parts 1 and 2")
    parser.add_argument("--only-text", action="store_true", help="only part 3")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "serve_benchmark.png"))
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    settings = Settings()
    log = Path(tempfile.gettempdir()) / "imgsearch-bench-serve.log"
    print(f"server log: {log}", flush=True)
    report: dict[str, Any] = {}
    if not args.only_text:
        url, data, labels, _ = stored_catalog(args.rows, args.data)
        # a vector of its own for each search of part 1 (seven ways)
        queries = [q.tolist() for q, _ in query_cases(data, labels, 7 * (args.queries + 2))]
        engine = make_engine(url)
        tenant_key, _ = keys.create_key(engine, "acme", name="bench/server/serve.py")
        admin_key, _ = keys.create_key(engine, None, admin=True, name="bench/server/serve.py")
        with (
            Catalog.open(url, settings=settings) as catalog,
            server(url, catalog.model, log) as (port, process),
            bare_server(log) as bare_port,
        ):
            print("1. latency ...", flush=True)
            report["latency"] = latency(catalog, port, bare_port, tenant_key, admin_key, queries)
            print(f"2. load: {CLIENTS} clients for {args.load_seconds:g} s ...", flush=True)
            report["load"] = load(port, process.pid, tenant_key, queries, args.load_seconds)
        keys.revoke_key(engine, tenant_key)
        keys.revoke_key(engine, admin_key)
        engine.dispose()
        show_latency_and_load(report, args)
        plot(report, Path(args.plot))
        print(f"\nplot: {args.plot}", flush=True)
    if not args.skip_text:
        report["text"] = {}
        with tempfile.TemporaryDirectory(prefix="imgsearch-bench-models-") as folder:
            for name, model in build_models(Path(folder)).items():
                report["text"][name] = text_part(
                    settings.home, name, model, args.text_seconds, args.rounds, log
                )
        show_text(report)


def show_latency_and_load(report: dict[str, Any], args: argparse.Namespace) -> None:
    lat = report["latency"]
    print()
    print("| search | HTTP p50 | in process p50 | HTTP / in process |")
    print("|---|---|---|---|")
    print(
        f"| a shop's (tenant key) | {lat['http']:.2f} ms | {lat['library']:.2f} ms | **{lat['http'] / lat['library']:.2f}x** |"
    )
    print(
        f"| unfiltered (admin key) | {lat['http admin']:.2f} ms | {lat['library admin']:.2f} ms | {lat['http admin'] / lat['library admin']:.2f}x |"
    )
    json_on_clock = lat["http, json"]
    print(
        f"| a shop's, the client's json.dumps on the clock | {json_on_clock:.2f} ms | | {json_on_clock / lat['library']:.2f}x |"
    )
    print(
        f"| a shop's with its total (HTTP's default), json.dumps on the clock | {lat['http, total']:.2f} ms "
        f"| | {lat['http, total'] / lat['library']:.2f}x |"
    )
    print(f"| floor: GET /healthz | {lat['healthz']:.2f} ms | | |")
    added = lat["http"] - lat["library"]
    print()
    print("| a shop's search: what HTTP adds | bare FastAPI route: same body, ten hits | added / bare |")
    print("|---|---|---|")
    print(f"| {added:.2f} ms | {lat['bare']:.2f} ms | **{added / lat['bare']:.2f}x** |")
    ld = report["load"]
    print()
    print(f"| {CLIENTS} clients, {args.load_seconds:g} s | value |")
    print("|---|---|")
    print(f"| requests | {ld['requests']} |")
    print(f"| errors | {ld['errors']} |")
    print(f"| requests/s | {ld['rps']:.0f} |")
    print(f"| p50 / p99 | {ld['p50']:.1f} ms / {ld['p99']:.1f} ms ({ld['p99'] / ld['p50']:.2f}x) |")
    print(
        f"| server RSS, 10th s -> last | {min([m for s, m in ld['rss'] if s >= 10] or [ld['rss'][0][1]]):.0f} -> {ld['rss'][-1][1]:.0f} MiB ({ld['rss_growth'] * 100:+.1f}%) |",
        flush=True,
    )


def show_text(report: dict[str, Any]) -> None:
    if "text" in report:
        print()
        print(
            f"| model | one at a time | micro-batched ({CLIENTS}) | ratio "
            "| ceiling: searches by vector | ceiling: forward pass per query, alone -> in 16 |"
        )
        print("|---|---|---|---|---|---|")
        for name, part in report["text"].items():
            alone, batched, vector = part["alone"], part["batched"], part["vector"]
            one, sixteen = part["forward"]
            errors = f" ({part['errors']} errors)" if part["errors"] else ""
            print(
                f"| {name} | {alone:.1f} q/s | {batched:.1f} q/s | **{batched / alone:.2f}x**{errors} "
                f"| {vector:.0f} q/s ({vector / alone:.2f}x) | {one:.2f} -> {sixteen:.2f} ms ({one / sixteen:.2f}x) |"
            )
        print("runs (q/s):", {name: part["runs"] for name, part in report["text"].items()})


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ld = report["load"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(range(len(ld["per_second"])), ld["per_second"], color="tab:blue")
    left.set_xlabel("second")
    left.set_ylabel("searches completed", color="tab:blue")
    left.set_ylim(bottom=0)
    memory = left.twinx()
    memory.plot([s for s, _ in ld["rss"]], [m for _, m in ld["rss"]], color="tab:red")
    memory.set_ylabel("server RSS (MiB)", color="tab:red")
    memory.set_ylim(bottom=0)
    left.set_title(f"{CLIENTS} clients: {ld['rps']:.0f} req/s, p99 {ld['p99']:.1f} ms")
    lat = report["latency"]
    names = ["healthz (floor)", "HTTP", "in process"]
    values = [lat["healthz"], lat["http"], lat["library"]]
    right.bar(names, values, color=["tab:gray", "tab:blue", "tab:green"])
    right.set_ylabel("p50 (ms)")
    right.set_title(f"a shop's vector search: HTTP {lat['http'] / lat['library']:.2f}x in process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
