"""A managed-style PostgreSQL on this box, as RDS, Cloud SQL, Azure, Supabase and Neon give one: a
server of its own from the embedded server's binaries, where the application's role owns its
database and has CREATEROLE but is not a superuser, logs in by password (scram-sha-256, local and
TCP alike), and the extensions were created by an administrator (the superuser ``postgres``).

:class:`ManagedServer` is what the ``managed_server`` fixture (tests/db/test_managed.py) yields."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg

from imgsearch.db import embedded
from tests.citus import Node, free_port
from tests.helpers import AS_SERVER_USER

CONF = """
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = scram-sha-256
"""
# the administrator (postgres) as the embedded server's own user; everyone else by password
HBA = """
local all postgres trust
host all postgres 127.0.0.1/32 trust
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
"""


@dataclass
class ManagedServer:
    node: Node

    @classmethod
    def start(cls, root: Path) -> ManagedServer:
        root.mkdir(parents=True, exist_ok=True)
        if AS_SERVER_USER:
            shutil.chown(root, embedded.SERVER_USER)
        node = Node(root / "managed", free_port(), CONF)
        node.init()
        (node.data / "pg_hba.conf").write_text(HBA)
        node.start()
        return cls(node)

    def admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """The administrator's session (the service's superuser, never the application's)."""
        return self.node.connect(database)

    def create_app(
        self, name: str, password: str, *, createrole: bool = True, extensions: tuple[str, ...] = ("vector", "pg_trgm", "dblink"),
    ) -> str:  # fmt: skip
        """Role ``name`` owning database ``name``, with ``extensions`` made by the administrator; its URL."""
        with self.admin() as conn:
            attributes = "LOGIN CREATEROLE" if createrole else "LOGIN"
            conn.execute(f"CREATE ROLE {name} {attributes} PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {name} OWNER {name}")
        with self.admin(name) as conn:
            for extension in extensions:
                conn.execute(f"CREATE EXTENSION {extension}")
        return f"postgresql+psycopg://{name}:{password}@127.0.0.1:{self.node.port}/{name}"

    def stop(self) -> None:
        self.node.stop("immediate")
