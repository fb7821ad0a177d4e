"""Shared fixtures: one real embedded PostgreSQL + pgvector per test session.

Every test that needs a database gets a fresh one, cloned from a migrated template, so
tests are isolated without sharing rows. ``make test`` runs two pytest processes (pytest-xdist;
``TEST_JOBS=0`` for one): each is a session of its own, with its own server, template, Citus
cluster and tiny models, so a test shares nothing with the tests running beside it but the local
Redis, where each uses queues of its own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from imgsearch.db import embedded
from tests.citus import REQUIRED, SKIP_PREFIX, CitusCluster, built, missing_reason
from tests.helpers import FileServer, serve_files

TEMPLATE = "imgsearch_template"
_counter = itertools.count()


def _tmp_root() -> Path:
    # /tmp is world-traversable already: the embedded server (run as its own user under root)
    # changes no permissions there.
    return Path(tempfile.mkdtemp(prefix="imgsearch-test-", dir="/tmp"))


@pytest.fixture(scope="session")
def pg_home() -> Iterator[Path]:
    """The home of the session's embedded server; stopped and removed at the end."""
    home = _tmp_root()
    embedded.ensure_started(home)
    try:
        yield home
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url(pg_home: Path) -> str:
    """SQLAlchemy URL of the session server's ``imgsearch`` database (left empty)."""
    return embedded.ensure_started(pg_home)


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(server_url)
    return psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> str:
    """A database migrated to head once, cloned by :func:`database_url`."""
    from imgsearch.db import migrate
    from imgsearch.db.engine import make_engine

    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    engine = make_engine(make_url(server_url).set(database=TEMPLATE).render_as_string())
    migrate.upgrade(engine)
    engine.dispose()
    return TEMPLATE


def new_database(server_url: str, template: str | None) -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    with _admin(server_url) as conn:
        if template:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        else:
            conn.execute(f"CREATE DATABASE {name}")
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def citus_cluster(server_url: str) -> Iterator[CitusCluster]:
    """A real Citus cluster on this box: a coordinator and 2 workers (tests/citus.py), built by
    `make citus`; stopped and removed at the end. Where Citus can't be had (a fresh clone with no
    ../shared and no internet) its tests are not run and the summary says why in one line; with
    IMGSEARCH_REQUIRE_CITUS=1 (CI) they fail instead."""
    if not built():
        if os.environ.get(REQUIRED) == "1":
            pytest.fail(f"{missing_reason()} ({REQUIRED}=1)")
        pytest.skip(SKIP_PREFIX + missing_reason())
    root = _tmp_root()
    root.chmod(0o755)  # the nodes run as the server's user and live below it
    cluster = CitusCluster.start(root / "citus")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(server_url: str, template_db: str) -> str:
    """A fresh, migrated database for one test."""
    return new_database(server_url, template_db)


@pytest.fixture
def empty_database_url(server_url: str) -> str:
    """A fresh database with no schema at all."""
    return new_database(server_url, None)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[FileServer]:
    """A real HTTP server on localhost serving ``tmp_path`` (see :class:`tests.helpers.FileServer`)."""
    with serve_files(tmp_path) as server:
        yield server


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An IMGSEARCH_HOME of its own (its server, if a test starts one, is stopped afterwards)."""
    path = _tmp_root()
    try:
        yield path
    finally:
        embedded.stop(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP checkpoint (32-d, 32x32 input) saved with save_pretrained."""
    from tests.tiny_models import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny SigLIP of another dimension (16-d), for model switches."""
    from tests.tiny_models import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip-16"), dim=16, seed=1)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP checkpoint (24-d projection)."""
    from tests.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP 2 checkpoint (NaFlex, 32-d)."""
    from tests.tiny_models import build_tiny_siglip2

    return build_tiny_siglip2(tmp_path_factory.mktemp("tiny-siglip2"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming the tests that could not run and why (only Citus's can be missing):
    "N Citus tests not run: <reason>"."""
    reasons = [
        str(report.longrepr[2]).removeprefix("Skipped: ")
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and SKIP_PREFIX in str(report.longrepr[2])
    ]
    for reason in sorted(set(reasons)):
        terminalreporter.write_line(f"{reasons.count(reason)} {reason}", yellow=True, bold=True)


@pytest.fixture(scope="session")
def trained_small() -> Path:
    """The small SigLIP trained on drawn products (imgsearch/samples/small_model.py): `make test`
    trains it once into .venv/small-siglip; a run without make trains it here (about 3 minutes)."""
    from imgsearch.samples import small_model

    return small_model.ensure(Path(__file__).resolve().parents[1] / small_model.DEFAULT_FOLDER)


@pytest.fixture(scope="session")
def untrained_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same small SigLIP with random weights (the trained one's start, and its control)."""
    from imgsearch.samples import small_model

    return small_model.initialise(tmp_path_factory.mktemp("models") / "small-random")


@pytest.fixture(scope="session")
def tiny_yolos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny YOLOS detector labelled mugs, bags, caps (random weights)."""
    from tests.tiny_models import build_tiny_yolos

    return build_tiny_yolos(tmp_path_factory.mktemp("tiny-yolos"))


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny OWLv2 open-vocabulary detector (each patch proposes its prior box)."""
    from tests.tiny_models import build_tiny_owlv2

    return build_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2"))


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DINOv2 backbone (32-d, 32x32 input): image only."""
    from tests.tiny_models import build_tiny_dino

    return build_tiny_dino(tmp_path_factory.mktemp("tiny-dinov2"), kind="dinov2")


@pytest.fixture(scope="session")
def tiny_dinov3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DINOv3 backbone (32-d, 32x32 input, 2 register tokens): image only."""
    from tests.tiny_models import build_tiny_dino

    return build_tiny_dino(tmp_path_factory.mktemp("tiny-dinov3"), kind="dinov3")
