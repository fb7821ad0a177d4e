"""A real Citus cluster on this box: a coordinator and workers, each its own PostgreSQL started
from the embedded server's binaries (with Citus built into them by ``make citus``), on
127.0.0.1 ports of their own (the nodes reach each other over TCP, as a real cluster does).

:class:`CitusCluster` is what the ``citus_cluster`` fixture (tests/conftest.py) yields and what
bench/citus.py runs; ``../shared/RECIPES.md`` has the steps it follows."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from imgsearch.db import embedded
from tests.helpers import AS_SERVER_USER, BIN

CONF = """
shared_preload_libraries = 'citus'
wal_level = logical
max_connections = 200
max_worker_processes = 64
max_wal_senders = 20
max_replication_slots = 20
max_prepared_transactions = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
citus.shard_count = 8
"""


REQUIRED = "IMGSEARCH_REQUIRE_CITUS"  # "1" (.ci/run): a missing Citus fails the Citus tests
SKIP_PREFIX = "Citus tests not run: "


def built() -> bool:
    """Whether Citus is installed in the embedded server's tree (``make citus``)."""
    return (BIN.parent / "lib" / "citus.so").exists()


def missing_reason() -> str:
    """Why Citus isn't there: what ``make citus`` wrote (deploy/citus/build.sh), else the step to run."""
    written = Path(sys.prefix) / ".citus-unavailable"
    if written.exists():
        return written.read_text().strip()
    return "Citus is not installed in the embedded server: run `make citus`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    data: Path
    port: int
    conf: str = CONF  # postgresql.conf lines added at init

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def pg_ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [*AS_SERVER_USER, str(BIN / "pg_ctl"), "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def init(self) -> None:
        subprocess.run(
            [*AS_SERVER_USER, str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(self.conf)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data}"
        self.pg_ctl("-l", str(self.log), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("-m", mode, "stop")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


def _prepare(node: Node, name: str) -> None:
    """Database ``name`` on ``node``, with citus (first) and vector."""
    with node.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with node.connect(name) as conn:
        conn.execute("CREATE EXTENSION citus")
        conn.execute("CREATE EXTENSION vector")


@dataclass
class CitusCluster:
    """A coordinator and ``workers``, Citus and pgvector created in each new database."""

    root: Path
    coordinator: Node
    workers: list[Node]
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path, workers: int = 2, conf: str = CONF) -> CitusCluster:
        """``conf``: each node's postgresql.conf additions (the tests' :data:`CONF` by default: no
        fsync; a benchmark gives durable ones)."""
        root.mkdir(parents=True, exist_ok=True)
        if AS_SERVER_USER:
            shutil.chown(root, embedded.SERVER_USER)
        nodes = [
            Node(root / name, free_port(), conf)
            for name in ["coordinator", *(f"worker{i}" for i in range(workers))]
        ]
        cluster = cls(root, nodes[0], nodes[1:])
        try:
            for node in nodes:
                node.init()
                node.start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def nodes(self) -> Sequence[Node]:
        return [self.coordinator, *self.workers]

    def create_database(self, name: str, workers: Sequence[Node] | None = None) -> str:
        """A database on every node with citus and vector, the workers added to its coordinator;
        its SQLAlchemy URL (the coordinator's)."""
        members = list(self.workers if workers is None else workers)
        for node in self.nodes:
            _prepare(node, name)
        with self.coordinator.connect(name) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", [self.coordinator.port])
            for worker in members:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", [worker.port])
        self.databases.append(name)
        return self.coordinator.url(name)

    def create_catalog(self, name: str) -> str:
        """:meth:`create_database`, migrated and distributed (``imgsearch db distribute``): an
        empty imgsearch catalog in Citus mode; its URL."""
        from imgsearch.db import citus, migrate
        from imgsearch.db.engine import make_engine

        url = self.create_database(name)
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
            citus.distribute(engine)
        finally:
            engine.dispose()
        return url

    def add_node(self, name: str, node: Node) -> None:
        """``node`` joins database ``name``'s cluster (its shards stay where they are until a rebalance)."""
        _prepare(node, name)
        with self.coordinator.connect(name) as conn:
            conn.execute("SELECT citus_add_node('127.0.0.1', %s)", [node.port])

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            except subprocess.SubprocessError:
                node.stop("immediate")
