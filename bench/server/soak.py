"""Mixed traffic against the HTTP service for N minutes while faults are injected on a schedule;
then ``bench/server/soak_check.py`` reads the history and the database and says what was lost.

    .venv/bin/python bench/server/soak.py --minutes 60 --rate 20 --disk     # the documented run
    .venv/bin/python bench/server/soak.py --seconds 90 --faults pg-immediate,worker-kill,redis-flush

Everything runs on this machine, started by the run and stopped at its end: an embedded
PostgreSQL in ``--home`` (on a tmpfs mounted for the run with ``--disk``, so that the full-disk
fault fills that mount and nothing else), a Redis of its own on a free port (it is flushed and
restarted), a local HTTP server the URL uploads download from (it stalls and resets),
``imgsearch serve --workers 2`` and two ``imgsearch worker`` processes, on the tests' tiny SigLIP.
The run plays the supervisor a deployment has (systemd, compose's ``restart: always``): a worker
or server that died is started again after 2 s, and PostgreSQL after the stop a fault made. Nothing
else is restarted or repaired by hand.

Traffic, at ``--rate`` operations a second from ``--clients`` threads, each on a keep-alive
connection and sending at random (Poisson) times, so that no fault can put the clients in step:
uploads (multipart files, URLs, bring-your-own vectors), searches of every kind with filters
(vector, text, an uploaded image, more like this image or product), product changes and feeds,
deletes. Two tenants: ``acme`` takes all the writes; ``stable`` holds vectors loaded before
the run that nothing changes, so its searches can be checked against an exact search.

Every operation goes into ``history.jsonl`` in ``--out`` (start, end, kind, status, the ids an
upload was acknowledged with, a search's query and hits), with the fault windows and once a second
the RSS and CPU time of the service, the workers and PostgreSQL, and PostgreSQL's connections per
program. At the end, the run waits for the queue to drain and runs the checker, which writes
``report.json`` and a plot; the exit status is the checker's (1 when an invariant broke).

The figure it produces: docs/reliability.md, the hour under faults (its table and docs/soak.png);
not in benchmarks.md: a soak checks invariants, not speed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis
from PIL import Image
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

import soak_check

from imgsearch import Catalog
from imgsearch.access import keys
from imgsearch.db import embedded
from imgsearch.db.engine import libpq_conninfo, make_engine
from imgsearch.settings import Settings
from tests.tiny_models import build_tiny_siglip

ROOT = Path(__file__).parents[2]
CATEGORIES = ["shoes", "bags", "lamps", "mugs", "shirts", "dresses", "chairs", "rugs"]
COLORS = ["red", "blue", "green", "black"]
STABLE_ROWS = 2000
SERVER_PROCESSES = 2
WORKERS = 2
RESTART_DELAY = 2.0  # seconds: a supervisor's restart delay (systemd's RestartSec)
REQUEST_TIMEOUT = 30.0  # a client gives up on a request after this long
DRAIN_TIMEOUT = 240.0
ALL_FAULTS = [
    "worker-kill",
    "pg-terminate",
    "redis-flush",
    "download-stall",
    "server-kill",
    "pg-fast",
    "lock-images",
    "redis-restart",
    "download-reset",
    "pg-immediate",
    "disk-full",
]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def jpeg(seed: int, size: int = 48) -> bytes:
    """A small photo-like JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, np.full_like(x, seed % 255)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Clock:
    """Seconds since the run started, the one time base of the history."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)


class History:
    """``history.jsonl``: one JSON line per operation, fault window and sample, from any thread."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self._file = open(path, "w")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


# -- the download server -------------------------------------------------------------------------


class Downloads:
    """A local HTTP server of JPEGs (``/img/<seed>.jpg``) whose ``mode`` a fault sets: ``ok``,
    ``stall`` (answers after 60 s) or ``reset`` (closes the connection unanswered)."""

    def __init__(self) -> None:
        self.mode = "ok"
        downloads = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if downloads.mode == "stall":
                    time.sleep(60)
                if downloads.mode == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.close()
                    return
                try:
                    seed = int(self.path.rsplit("/", 1)[-1].split(".")[0])
                except ValueError:
                    self.send_error(404)
                    return
                body = jpeg(seed)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a stalled download its client gave up on
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.mode = "ok"
        self.server.shutdown()


# -- the processes ----------------------------------------------------------------------------


@dataclass
class Service:
    """One supervised program: started again ``RESTART_DELAY`` s after it died, unless held."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    held: bool = False
    died_at: float | None = None
    restarts: int = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)


@dataclass
class Stack:
    """Everything the run starts, and the faults' means to break it."""

    home: Path
    out: Path
    clock: Clock
    history: History
    database_url: str = ""
    redis_port: int = 0
    redis_proc: subprocess.Popen[bytes] | None = None
    downloads: Downloads | None = None
    services: list[Service] = field(default_factory=list)
    port: int = 0
    model: Path | None = None
    tmpfs: bool = False
    pg_down: bool = False
    stopping: bool = False
    dim: int = 32

    # PostgreSQL
    def pgdata(self) -> Path:
        return embedded._pgdata(self.home)

    def pg_ctl(self, *args: str) -> None:
        user = embedded.SERVER_USER if os.geteuid() == 0 else None
        embedded._ep().pg_ctl(["-w", *args], pgdata=self.pgdata(), user=user, timeout=120)

    def pg_start(self) -> None:
        embedded.ensure_started(self.home)
        self.pg_down = False

    def admin_conn(self) -> psycopg.Connection[Any]:
        url = make_url(self.database_url)
        return psycopg.connect(
            libpq_conninfo(url), autocommit=True, connect_timeout=5, application_name="soak"
        )

    # Redis
    def redis_start(self) -> None:
        self.redis_proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.redis_port)
        for _ in range(100):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.1)
        raise SystemExit("redis-server did not start")

    def redis_stop(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.kill()
            self.redis_proc.wait()

    def redis_client(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_timeout=5)

    # the service and the workers
    def server(self) -> Service:
        return next(s for s in self.services if s.name == "server")

    def workers(self) -> list[Service]:
        return [s for s in self.services if s.name.startswith("worker")]

    def supervise(self) -> None:
        """The deployment's supervisor: start again what died (after ``RESTART_DELAY``)."""
        while not self.stopping:
            for service in self.services:
                proc = service.proc
                if service.held or proc is None or proc.poll() is None:
                    service.died_at = None
                    continue
                if service.died_at is None:
                    service.died_at = time.monotonic()
                    self.history.write(
                        {
                            "event": "exited",
                            "service": service.name,
                            "t": self.clock.now(),
                            "code": proc.returncode,
                        }
                    )
                elif time.monotonic() - service.died_at >= RESTART_DELAY:
                    service.start()
                    service.restarts += 1
                    service.died_at = None
                    self.history.write({"event": "restarted", "service": service.name, "t": self.clock.now()})
            time.sleep(0.25)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"imgsearch serve did not get ready: see {self.out / 'server.log'}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes and their ended children have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS


def postmaster_pid(stack: Stack) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((stack.pgdata() / "postmaster.pid").read_text().split()[0])
    return None


def sample(stack: Stack, stop: threading.Event) -> None:
    """Once a second: RSS and CPU seconds used per program (PostgreSQL's too) and PostgreSQL's
    connections per program."""
    conn: psycopg.Connection[Any] | None = None
    while not stop.wait(1.0):
        record: dict[str, Any] = {"sample": stack.clock.now(), "rss": {}, "cpu": {}, "connections": None}
        for service in stack.services:
            if service.proc is not None and service.proc.poll() is None:
                tree = process_tree(service.proc.pid)
                record["rss"][service.name] = rss_mib(tree)
                record["cpu"][service.name] = cpu_seconds(tree)
        postmaster = postmaster_pid(stack)
        if postmaster is not None:
            record["cpu"]["postgres"] = cpu_seconds(process_tree(postmaster))
        try:
            if conn is None or conn.closed:
                conn = stack.admin_conn()
            rows = conn.execute(
                "SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
            ).fetchall()
            record["connections"] = {name: n for name, n in rows}
        except psycopg.Error:
            conn = None
        stack.history.write(record)


# -- the traffic ---------------------------------------------------------------------------------


class Api:
    """One keep-alive connection to the service, reopened after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.retried = False

    def call(
        self,
        method: str,
        path: str,
        key: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers and the decoded JSON body; status 0 for a connection error or a timeout."""
        headers = {"Authorization": f"Bearer {key}"}
        if body is not None:
            headers["Content-Type"] = content_type
        self.retried = False
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = None
                # a keep-alive connection the server closed before this request: that request never
                # reached it, so sending it again is safe, once
                if attempt == 0 and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError)):
                    self.retried = True  # in the history: a request cut by a killed process shows too
                    continue
                kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                return 0, {}, {"error": kind}
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = {"error": raw[:200].decode(errors="replace")}
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        raise AssertionError("unreachable")


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Shared:
    """What the clients know of the catalog: acknowledged images and products of ``acme``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    images: list[int] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    counter: int = 0

    def next(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def pick_image(self, rng: random.Random) -> int | None:
        with self.lock:
            return rng.choice(self.images) if self.images else None

    def pick_product(self, rng: random.Random) -> str | None:
        with self.lock:
            return rng.choice(self.products) if self.products else None


OPS: dict[str, float] = {
    "search_vector_stable": 0.20,
    "search_vector": 0.10,
    "search_text": 0.10,
    "search_similar": 0.06,
    "search_similar_product": 0.04,
    "search_image": 0.04,
    "upload_file": 0.12,
    "upload_url": 0.09,
    "upload_vector": 0.09,
    "update_product": 0.06,
    "feed": 0.03,
    "delete_image": 0.04,
    "delete_product": 0.03,
}


def filters(rng: random.Random) -> dict[str, Any]:
    """A random mix of the filters a shop sends."""
    body: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.3:
        body["category"] = rng.choice(CATEGORIES)
    elif roll < 0.45:
        body["category"] = rng.sample(CATEGORIES, 2)
    if rng.random() < 0.3:
        body["price_max"] = rng.choice([20, 50, 100])
    if rng.random() < 0.15:
        body["attributes"] = {"color": rng.choice(COLORS)}
    return body


def product_fields(rng: random.Random) -> dict[str, Any]:
    return {
        "category": rng.choice(CATEGORIES),
        "price": round(rng.uniform(1, 150), 2),
        "attributes": {"color": rng.choice(COLORS)},
    }


class Traffic:
    """``clients`` threads sending ``rate`` operations a second between them, until stopped."""

    def __init__(self, stack: Stack, keys_: dict[str, str], rate: float, clients: int, seed: int) -> None:
        self.stack = stack
        self.keys = keys_
        self.rate = rate
        self.clients = clients
        self.seed = seed
        self.shared = Shared()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.local = threading.local()

    def start(self) -> None:
        for i in range(self.clients):
            thread = threading.Thread(target=self.client, args=(i,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT + 10)

    def client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        api = self.local.api = Api(self.stack.port)
        mean_gap = self.clients / self.rate
        names, weights = list(OPS), list(OPS.values())
        next_at = time.monotonic() + rng.expovariate(1 / mean_gap)
        while not self.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            op = rng.choices(names, weights)[0]
            getattr(self, op)(api, rng)
            # Poisson arrivals, each gap counted from the later of the planned start and the end of
            # this operation: clients stay independent. A fixed period would put them in step after a
            # fault that releases all of their requests at once (the lock): every client then sends at
            # the same instant each period, and the service sees bursts instead of a stream.
            next_at = max(next_at, time.monotonic()) + rng.expovariate(1 / mean_gap)

    def record(
        self, op: str, t0: float, status: int, headers: dict[str, str], body: Any, **extra: Any
    ) -> None:
        record: dict[str, Any] = {"op": op, "t0": t0, "t1": self.stack.clock.now(), "status": status}
        if status >= 400 or status == 0:
            record["retry_after"] = headers.get("retry-after")
            record["error"] = (
                (body or {}).get("type") or (body or {}).get("error") if isinstance(body, dict) else None
            )
            record["detail"] = str((body or {}).get("detail", ""))[:200] if isinstance(body, dict) else ""
        if self.local.api.retried:
            record["retried"] = True
        record.update(extra)
        self.stack.history.write(record)

    # searches
    def search(
        self, api: Api, rng: random.Random, op: str, key: str, body: dict[str, Any], tenant: str
    ) -> None:
        body.setdefault("k", 10)
        t0 = self.stack.clock.now()
        status, headers, payload = api.call("POST", "/v1/search", key, json.dumps(body).encode())
        hits = (
            [[h["image_id"], h["distance"], h["tenant"]] for h in payload["hits"]] if status == 200 else None
        )
        query = body if op == "search_vector_stable" else {k: v for k, v in body.items() if k != "vector"}
        self.record(op, t0, status, headers, payload, tenant=tenant, query=query, hits=hits)

    def vector(self, rng: random.Random) -> list[float]:
        v = np.random.default_rng(rng.randrange(2**32)).standard_normal(self.stack.dim)
        return [round(float(x), 5) for x in v / np.linalg.norm(v)]

    def search_vector_stable(self, api: Api, rng: random.Random) -> None:
        body = {"vector": self.vector(rng), **filters(rng)}
        self.search(api, rng, "search_vector_stable", self.keys["stable"], body, "stable")

    def search_vector(self, api: Api, rng: random.Random) -> None:
        self.search(
            api, rng, "search_vector", self.keys["acme"], {"vector": self.vector(rng), **filters(rng)}, "acme"
        )

    def search_text(self, api: Api, rng: random.Random) -> None:
        text = f"{rng.choice(COLORS)} {rng.choice(CATEGORIES)} {rng.randrange(50)}"
        self.search(api, rng, "search_text", self.keys["acme"], {"text": text, **filters(rng)}, "acme")

    def search_similar(self, api: Api, rng: random.Random) -> None:
        image = self.shared.pick_image(rng)
        if image is not None:
            self.search(
                api, rng, "search_similar", self.keys["acme"], {"similar_to": image, **filters(rng)}, "acme"
            )

    def search_similar_product(self, api: Api, rng: random.Random) -> None:
        product = self.shared.pick_product(rng)
        if product is not None:
            body = {"similar_to_product": product, **filters(rng)}
            self.search(api, rng, "search_similar_product", self.keys["acme"], body, "acme")

    def search_image(self, api: Api, rng: random.Random) -> None:
        data, content_type = multipart({"k": "10"}, [("file", jpeg(rng.randrange(10**6)))])
        t0 = self.stack.clock.now()
        status, headers, payload = api.call("POST", "/v1/search/image", self.keys["acme"], data, content_type)
        hits = (
            [[h["image_id"], h["distance"], h["tenant"]] for h in payload["hits"]] if status == 200 else None
        )
        self.record("search_image", t0, status, headers, payload, tenant="acme", hits=hits)

    # uploads
    def uploaded(
        self,
        op: str,
        t0: float,
        status: int,
        headers: dict[str, str],
        payload: Any,
        product: str,
        **extra: Any,
    ) -> None:
        ids = payload.get("ids") if status == 201 and isinstance(payload, dict) else None
        if ids:
            with self.shared.lock:
                self.shared.images.extend(ids)
                self.shared.products.append(product)
        self.record(op, t0, status, headers, payload, ids=ids, product_id=product, **extra)

    def upload_file(self, api: Api, rng: random.Random) -> None:
        n = self.shared.next()
        product = f"f{self.seed}-{n}"
        fields = product_fields(rng)
        form = {
            "product_id": product,
            "category": fields["category"],
            "price": str(fields["price"]),
            "attributes": json.dumps(fields["attributes"]),
        }
        data, content_type = multipart(form, [("file", jpeg(10**7 + self.seed * 10**6 + n))])
        t0 = self.stack.clock.now()
        status, headers, payload = api.call("POST", "/v1/images", self.keys["acme"], data, content_type)
        self.uploaded("upload_file", t0, status, headers, payload, product, price=fields["price"])

    def upload_url(self, api: Api, rng: random.Random) -> None:
        n = self.shared.next()
        product = f"u{self.seed}-{n}"
        assert self.stack.downloads is not None
        url = f"{self.stack.downloads.url}/img/{2 * 10**7 + self.seed * 10**6 + n}.jpg"
        body = {"items": [{"url": url, "product_id": product, **product_fields(rng)}]}
        t0 = self.stack.clock.now()
        status, headers, payload = api.call(
            "POST", "/v1/images", self.keys["acme"], json.dumps(body).encode()
        )
        self.uploaded(
            "upload_url", t0, status, headers, payload, product, url=url, price=body["items"][0]["price"]
        )

    def upload_vector(self, api: Api, rng: random.Random) -> None:
        n = self.shared.next()
        product = f"v{self.seed}-{n}"
        items = [
            {"embedding": self.vector(rng), "product_id": product, **product_fields(rng)} for _ in range(2)
        ]
        t0 = self.stack.clock.now()
        status, headers, payload = api.call(
            "POST", "/v1/images", self.keys["acme"], json.dumps({"items": items}).encode()
        )
        self.uploaded("upload_vector", t0, status, headers, payload, product, price=items[-1]["price"])

    # products and deletes
    def update_product(self, api: Api, rng: random.Random) -> None:
        product = self.shared.pick_product(rng)
        if product is None:
            return
        body = {"price": round(rng.uniform(1, 150), 2), "category": rng.choice(CATEGORIES)}
        t0 = self.stack.clock.now()
        path = f"/v1/products/{product}"
        status, headers, payload = api.call("PATCH", path, self.keys["acme"], json.dumps(body).encode())
        self.record("update_product", t0, status, headers, payload, product_id=product, price=body["price"])

    def feed(self, api: Api, rng: random.Random) -> None:
        with self.shared.lock:
            products = rng.sample(self.shared.products, min(5, len(self.shared.products)))
        if not products:
            return
        items = [{"product_id": p, "price": round(rng.uniform(1, 150), 2)} for p in products]
        t0 = self.stack.clock.now()
        status, headers, payload = api.call(
            "POST", "/v1/products:update", self.keys["acme"], json.dumps({"items": items}).encode()
        )
        self.record("feed", t0, status, headers, payload, prices={i["product_id"]: i["price"] for i in items})

    def delete_image(self, api: Api, rng: random.Random) -> None:
        with self.shared.lock:
            if len(self.shared.images) < 50:
                return
            image = self.shared.images.pop(rng.randrange(len(self.shared.images)))
        t0 = self.stack.clock.now()
        status, headers, payload = api.call("DELETE", f"/v1/images/{image}", self.keys["acme"])
        self.record("delete_image", t0, status, headers, payload, image_id=image)

    def delete_product(self, api: Api, rng: random.Random) -> None:
        with self.shared.lock:
            if len(self.shared.products) < 50:
                return
            product = self.shared.products.pop(rng.randrange(len(self.shared.products)))
        t0 = self.stack.clock.now()
        status, headers, payload = api.call("DELETE", f"/v1/products/{product}", self.keys["acme"])
        self.record("delete_product", t0, status, headers, payload, product_id=product)


# -- the faults ---------------------------------------------------------------------------------


def fault_worker_kill(stack: Stack) -> None:
    stack.workers()[0].kill()


def fault_server_kill(stack: Stack) -> None:
    """SIGKILL one of uvicorn's server processes (uvicorn starts a new one)."""
    server = stack.server()
    assert server.proc is not None
    children = [pid for pid in process_tree(server.proc.pid) if pid != server.proc.pid]
    if children:
        os.kill(children[0], signal.SIGKILL)


def fault_redis_flush(stack: Stack) -> None:
    stack.redis_client().flushall()


def fault_redis_restart(stack: Stack) -> None:
    stack.redis_stop()
    time.sleep(5)
    stack.redis_start()


def pg_restart(stack: Stack, mode: str) -> None:
    stack.pg_down = True
    stack.pg_ctl("-m", mode, "stop")
    time.sleep(5)
    stack.pg_start()


def fault_pg_fast(stack: Stack) -> None:
    pg_restart(stack, "fast")


def fault_pg_immediate(stack: Stack) -> None:
    pg_restart(stack, "immediate")


def fault_pg_terminate(stack: Stack) -> None:
    with stack.admin_conn() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'imgsearch%'"
        )


def fault_download_stall(stack: Stack) -> None:
    assert stack.downloads is not None
    stack.downloads.mode = "stall"
    time.sleep(20)
    stack.downloads.mode = "ok"


def fault_download_reset(stack: Stack) -> None:
    assert stack.downloads is not None
    stack.downloads.mode = "reset"
    time.sleep(20)
    stack.downloads.mode = "ok"


def fault_lock_images(stack: Stack) -> None:
    """A migration-like statement holding an ACCESS EXCLUSIVE lock on ``images`` for 30 s."""
    with stack.admin_conn() as conn:
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE imgsearch.images IN ACCESS EXCLUSIVE MODE")
        time.sleep(30)
        conn.execute("COMMIT")


def fault_disk_full(stack: Stack) -> None:
    """Fill the tmpfs the data directory lies on for 20 s, then free it."""
    if not stack.tmpfs:
        raise SystemExit("disk-full needs --disk (a tmpfs mounted for the run)")
    filler = stack.home / "filler"
    with open(filler, "wb") as out:
        chunk = b"\0" * 2**20
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
                out.flush()
    time.sleep(20)
    filler.unlink()


FAULTS: dict[str, Callable[[Stack], None]] = {
    name: globals()[f"fault_{name.replace('-', '_')}"] for name in ALL_FAULTS
}


def schedule(faults: list[str], seconds: float, warmup: float) -> list[tuple[float, str]]:
    """The faults spread evenly over the run after the warm-up, leaving its last fifth quiet."""
    span = seconds * 0.8 - warmup
    return [(warmup + span * (i + 0.5) / len(faults), name) for i, name in enumerate(faults)]


def inject(stack: Stack, plan: list[tuple[float, str]], stop: threading.Event) -> None:
    for at, name in plan:
        if stop.wait(max(0.0, at - stack.clock.now())):
            return
        start = stack.clock.now()
        print(f"[{start:7.1f} s] fault {name} ...", flush=True)
        error = None
        try:
            FAULTS[name](stack)
        except Exception as exc:  # a fault that could not be injected is reported, not hidden
            error = f"{type(exc).__name__}: {exc}"
            print(f"  the fault failed: {error}", flush=True)
        end = stack.clock.now()
        stack.history.write({"fault": name, "start": start, "end": end, "error": error})
        print(f"[{end:7.1f} s] fault {name} over", flush=True)


# -- the run ------------------------------------------------------------------------------------


def setup(stack: Stack, args: argparse.Namespace) -> dict[str, str]:
    """Start PostgreSQL, Redis, the download server, the service and the workers; load the
    ``stable`` tenant; return the API keys."""
    stack.home.mkdir(parents=True, exist_ok=True)
    if args.disk:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={args.disk_mb}m", "tmpfs", str(stack.home)], check=True
        )
        stack.tmpfs = True
    stack.database_url = embedded.ensure_started(stack.home)
    stack.model = build_tiny_siglip(stack.out / "model")
    settings = Settings(model=str(stack.model))
    with Catalog.open(stack.database_url, model=str(stack.model), settings=settings) as catalog:
        stack.dim = catalog.dim
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((STABLE_ROWS, catalog.dim))
        catalog.add_many(
            {
                "embedding": vectors[i],
                "tenant": "stable",
                "product_id": f"s{i}",
                "category": CATEGORIES[i % len(CATEGORIES)],
                "price": float(1 + (i * 37) % 150),
                "attributes": {"color": COLORS[i % len(COLORS)]},
            }
            for i in range(STABLE_ROWS)
        )
    engine = make_engine(stack.database_url)
    api_keys = {tenant: keys.create_key(engine, tenant, name="soak")[0] for tenant in ("acme", "stable")}
    engine.dispose()

    stack.redis_port = free_port()
    stack.redis_start()
    stack.downloads = Downloads()
    stack.port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    env.update(
        IMGSEARCH_DATABASE_URL=stack.database_url,
        IMGSEARCH_MODEL=str(stack.model),
        IMGSEARCH_REDIS_URL=f"redis://127.0.0.1:{stack.redis_port}/0",
        IMGSEARCH_QUEUE="soak",
        IMGSEARCH_WAKE_WORKERS="true",
        IMGSEARCH_SWEEP_SECONDS="5",
        IMGSEARCH_LEASE_SECONDS="30",
        IMGSEARCH_DOWNLOAD_ALLOW="127.0.0.1/32",
        IMGSEARCH_DEVICE="cpu",
        IMGSEARCH_TORCH_THREADS="1",
        HF_HUB_OFFLINE="1",
        TMPDIR=str(stack.out),
    )
    python = sys.executable
    stack.services.append(
        Service(
            "server",
            [
                python,
                "-m",
                "imgsearch",
                "serve",
                "--port",
                str(stack.port),
                "--workers",
                str(SERVER_PROCESSES),
                "--preload",
            ],
            {**env, "PGAPPNAME": "imgsearch-serve"},
            stack.out / "server.log",
        )
    )
    for i in range(WORKERS):
        stack.services.append(
            Service(
                f"worker-{i}",
                [python, "-m", "imgsearch", "worker"],
                {**env, "PGAPPNAME": "imgsearch-worker"},
                stack.out / f"worker-{i}.log",
            )
        )
    for service in stack.services:
        service.start()
    stack.wait_ready()
    return api_keys


def drain(stack: Stack) -> float:
    """Wait until no image is pending or being embedded; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_TIMEOUT:
        with contextlib.suppress(psycopg.Error), stack.admin_conn() as conn:
            row = conn.execute(
                "SELECT count(*) FROM imgsearch.images WHERE state IN ('pending', 'embedding')"
            ).fetchone()
            if row is not None and row[0] == 0:
                return time.monotonic() - started
        time.sleep(1)
    return time.monotonic() - started


def teardown(stack: Stack) -> None:
    stack.stopping = True
    for service in stack.services:
        service.held = True
        service.kill(signal.SIGTERM)
    stack.redis_stop()
    if stack.downloads is not None:
        stack.downloads.close()
    with contextlib.suppress(Exception):
        embedded.stop(stack.home)
    if stack.tmpfs:
        subprocess.run(["umount", "-l", str(stack.home)], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="length of the run (default 10)")
    length.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rate", type=float, default=15, help="operations a second (default 15)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--faults", default="all", help=f"comma-separated, or 'all': {', '.join(ALL_FAULTS)}")
    parser.add_argument("--disk", action="store_true", help="the data directory on a tmpfs, for disk-full")
    parser.add_argument("--disk-mb", type=int, default=1536, help="the tmpfs's size (default 1536)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the first fault")
    parser.add_argument("--out", default=None, help="folder for the history, logs and report")
    parser.add_argument("--plot", default=None, help="write the plot here too (e.g. docs/soak.png)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    seconds = args.seconds if args.seconds is not None else (args.minutes or 10) * 60
    faults = (
        [f for f in ALL_FAULTS if args.disk or f != "disk-full"]
        if args.faults == "all"
        else args.faults.split(",")
    )
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults: {', '.join(unknown)}")
    if "disk-full" in faults and not args.disk:
        parser.error("disk-full needs --disk")
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds * 0.15)
    out = Path(args.out or tempfile.mkdtemp(prefix="imgsearch-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    clock = Clock()
    history = History(out / "history.jsonl", clock)
    stack = Stack(home=home, out=out, clock=clock, history=history)
    print(
        f"soak: {seconds:g} s at {args.rate:g} ops/s, faults {', '.join(faults)}; output in {out}", flush=True
    )
    stop = threading.Event()
    try:
        api_keys = setup(stack, args)
        plan = schedule(faults, seconds, warmup)
        stack.clock = clock = Clock()
        history.clock = clock
        history.write(
            {
                "run": {
                    "seconds": seconds,
                    "rate": args.rate,
                    "clients": args.clients,
                    "faults": plan,
                    "server_processes": SERVER_PROCESSES,
                    "workers": WORKERS,
                    "pool_size": Settings.model_fields["pool_size"].default,
                }
            }
        )
        threading.Thread(target=stack.supervise, daemon=True).start()
        sampler = threading.Thread(target=sample, args=(stack, stop), daemon=True)
        sampler.start()
        injector = threading.Thread(target=inject, args=(stack, plan, stop), daemon=True)
        injector.start()
        traffic = Traffic(stack, api_keys, args.rate, args.clients, args.seed)
        traffic.start()
        while clock.now() < seconds:
            time.sleep(min(10.0, seconds - clock.now()))
            print(f"[{clock.now():7.1f} s] {len(traffic.shared.images)} images acknowledged", flush=True)
        traffic.join()
        injector.join(timeout=120)
        history.write({"traffic_end": clock.now()})
        print("traffic stopped; waiting for the queue to drain ...", flush=True)
        drained = drain(stack)
        time.sleep(12)  # idle: pools settle to their bound, the sampler sees it
        stop.set()
        sampler.join()
        history.write(
            {
                "drained": round(drained, 1),
                "end": clock.now(),
                "restarts": {s.name: s.restarts for s in stack.services},
            }
        )
        history.close()
        report = soak_check.check(out / "history.jsonl", stack.database_url)
    finally:
        stop.set()
        teardown(stack)
    soak_check.write(report, out)
    plots = [out / "soak.png"] + ([Path(args.plot)] if args.plot else [])
    for path in plots:
        soak_check.plot(out / "history.jsonl", report, path)
    print(soak_check.summary(report))
    print(f"report: {out / 'report.json'}; plot: {', '.join(map(str, plots))}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
