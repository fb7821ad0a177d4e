"""A real ``imgsearch serve`` process (uvicorn) on the session's embedded PostgreSQL, and httpx
clients for it. Tests isolate themselves by tenant: each makes keys for tenants of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine

from imgsearch.access import keys
from imgsearch.db.engine import make_engine
from tests.conftest import new_database
from tests.helpers import clean_environment, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
# the shared server's limits, small enough to reach in a test
MAX_IMAGE_BYTES = 1_000_000
MAX_BATCH_ITEMS = 50


@dataclass
class Api:
    """A running server: its URL, process, log and database."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    database_url: str
    env: dict[str, str]
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine

    def key(self, tenant: str | None = None, *, admin: bool = False) -> str:
        key, _ = keys.create_key(self.engine, tenant, admin=admin)
        return key

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._engine is not None:
            self._engine.dispose()


def server_env(database_url: str, model: Path, **env: str) -> dict[str, str]:
    environment = clean_environment()
    environment.update(
        IMGSEARCH_DATABASE_URL=database_url,
        IMGSEARCH_MODEL=str(model),
        IMGSEARCH_REDIS_URL=REDIS_URL,
        IMGSEARCH_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    environment.update(env)
    return environment


def start_api(
    database_url: str, model: Path, folder: Path, *args: str, ready: bool = True, **env: str
) -> Api:
    """``imgsearch serve`` on a free port; returns once ``/healthz`` answers."""
    port = free_port()
    environment = server_env(database_url, model, **env)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "serve", "--port", str(port), *args],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = Api(f"http://127.0.0.1:{port}", process, log, database_url, environment)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"imgsearch serve exited with {process.returncode}:\n{api.log_text()}")
        with contextlib.suppress(httpx.HTTPError):
            alive = httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200
            if alive and (not ready or httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200):
                return api
        time.sleep(0.1)
    api.stop()
    raise AssertionError(f"imgsearch serve did not answer within 90 s:\n{api.log_text()}")


@pytest.fixture(scope="session")
def api_database(server_url: str, template_db: str) -> str:
    return new_database(server_url, template_db)


@pytest.fixture(scope="session")
def api_queue() -> Iterator[str]:
    queue = f"imgsearch-api-test-{uuid.uuid4().hex[:8]}"
    yield queue
    redis.Redis.from_url(REDIS_URL).delete(queue)


@pytest.fixture(scope="session")
def api(
    api_database: str, tiny_siglip: Path, api_queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """The session's server: small limits, uploads wake workers on its own queue, downloads from
    127.0.0.1 allowed (the tests' image server)."""
    running = start_api(
        api_database,
        tiny_siglip,
        tmp_path_factory.mktemp("api"),
        IMGSEARCH_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
        IMGSEARCH_MAX_BATCH_ITEMS=str(MAX_BATCH_ITEMS),
        IMGSEARCH_QUEUE=api_queue,
        IMGSEARCH_WAKE_WORKERS="true",
        IMGSEARCH_DOWNLOAD_ALLOW="127.0.0.1",
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def tenant() -> str:
    """A tenant of this test's own."""
    return f"shop-{uuid.uuid4().hex[:10]}"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is an RFC 9457 problem with ``status``; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["type"].startswith("/problems/")
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body
