"""The PostgreSQL work queue: claims, leases, stale workers, out-of-memory splitting, faults."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import time

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import DatabaseUnavailable, InvalidImage, InvalidInput, TransientError
from imgsearch.ingest.downloads import Downloads
from imgsearch.work import queue
from tests.helpers import FileServer, image_bytes, unit


@pytest.fixture
def catalog(database_url: str) -> Catalog:
    with Catalog.open(database_url) as cat:
        cat.add_many({"image": image_bytes(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(6))
        yield cat


def fake_vectors(datas: list[bytes]) -> list[np.ndarray]:
    return [unit(768, len(d)) for d in datas]


def test_claims_skip_locked_rows(catalog: Catalog) -> None:
    with catalog.engine.begin() as first:
        a = queue.claim(first, 4)
        with catalog.engine.begin() as second:
            b = queue.claim(second, 4)
    assert len(a) == 4 and len(b) == 2
    assert not {c.image_id for c in a} & {c.image_id for c in b}


def test_stale_worker_writes_nothing_and_nothing_is_embedded_twice(catalog: Catalog) -> None:
    with catalog.engine.begin() as conn:
        stale = queue.claim(conn, 6, lease_seconds=1)
    time.sleep(1.2)
    with catalog.engine.begin() as conn:
        fresh = queue.claim(conn, 6, lease_seconds=60)
    assert {c.image_id for c in fresh} == {c.image_id for c in stale}
    with catalog.engine.begin() as conn:
        late = queue.store(
            conn, catalog.registered_model(), stale, fake_vectors([c.content or b"" for c in stale])
        )
    assert (late.lost, late.ready) == (6, 0)
    with catalog.engine.begin() as conn:
        done = queue.store(
            conn, catalog.registered_model(), fresh, fake_vectors([c.content or b"" for c in fresh])
        )
        again = queue.store(
            conn, catalog.registered_model(), fresh, fake_vectors([c.content or b"" for c in fresh])
        )
    assert done.ready == 6 and again.lost == 6
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar() == 6
        assert conn.execute(text("SELECT max(attempts) FROM imgsearch.images")).scalar() == 2


def test_out_of_memory_splits_the_batch(catalog: Catalog) -> None:
    sizes: list[int] = []

    def small_gpu(datas: list[bytes]) -> list[np.ndarray]:
        sizes.append(len(datas))
        if len(datas) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fake_vectors(datas)

    result = queue.process_batch(catalog.engine, catalog.registered_model(), small_gpu, batch_size=6)
    assert result.ready == 6
    assert sizes[0] == 6 and max(sizes[1:]) <= 3


def test_transient_errors_release_then_give_up(catalog: Catalog) -> None:
    def flaky(datas: list[bytes]) -> list[object]:
        return [TransientError("model server busy")] * len(datas)

    for attempt in range(1, queue.MAX_ATTEMPTS + 1):
        result = queue.process_batch(catalog.engine, catalog.registered_model(), flaky, batch_size=6)
        assert result.claimed == 6
        if attempt == queue.MAX_ATTEMPTS:
            break
        with catalog.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT state, error, extract(epoch FROM retry_at - now()) AS wait FROM imgsearch.images"
                )
            ).all()
            # given back as pending, not claimable before a backoff that doubles with each attempt,
            # saying why it waits
            assert {r.state for r in rows} == {"pending"}
            delay = queue.retry_delay(attempt)
            assert delay == queue.RETRY_BASE_SECONDS * 2 ** (attempt - 1)
            assert all(delay - 2 < r.wait <= delay for r in rows)
            for r in rows:  # says when the retry really comes: from a time on, at a worker's next run
                found = re.fullmatch(
                    rf"attempt {attempt} of {queue.MAX_ATTEMPTS} failed; retried at the first worker run "
                    rf"from (\S+) \({delay:g} s after this attempt\): model server busy",
                    r.error,
                )
                assert found, r.error
                when = dt.datetime.fromisoformat(found.group(1))
                assert abs((when - dt.datetime.now(dt.UTC)).total_seconds() - float(r.wait)) < 2
            assert queue.claimable_count(catalog.engine) == 0
        assert (
            queue.process_batch(catalog.engine, catalog.registered_model(), flaky, batch_size=6).claimed == 0
        )
        with catalog.engine.begin() as conn:  # the backoff has passed
            conn.execute(text("UPDATE imgsearch.images SET retry_at = now() - interval '1 second'"))
        assert queue.claimable_count(catalog.engine) == 6
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT state, error, retry_at FROM imgsearch.images")).all()
    assert {r.state for r in rows} == {"failed"}
    assert all(r.error.startswith(f"gave up after {queue.MAX_ATTEMPTS} attempts") for r in rows)
    assert all(r.retry_at is None for r in rows)


def test_an_image_retried_after_a_passing_failure_becomes_ready(catalog: Catalog) -> None:
    calls = 0

    def recovers(datas: list[bytes]) -> list[object]:
        nonlocal calls
        calls += 1
        return (
            [TransientError("host reset the connection")] * len(datas) if calls == 1 else fake_vectors(datas)
        )

    queue.process_batch(catalog.engine, catalog.registered_model(), recovers, batch_size=6)
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.images SET retry_at = now() - interval '1 second'"))
    result = queue.process_batch(catalog.engine, catalog.registered_model(), recovers, batch_size=6)
    assert result.ready == 6
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT state, error, retry_at, attempts FROM imgsearch.images")).all()
    assert {(r.state, r.error, r.retry_at, r.attempts) for r in rows} == {("ready", None, None, 2)}


def test_invalid_image_is_failed_with_its_message(catalog: Catalog) -> None:
    def picky(datas: list[bytes]) -> list[object]:
        return [InvalidImage("not a product photo"), *fake_vectors(datas[1:])]

    result = queue.process_batch(catalog.engine, catalog.registered_model(), picky, batch_size=6)
    assert (result.ready, result.failed) == (5, 1)
    assert list(result.errors.values()) == ["not a product photo"]


def test_images_by_url_are_downloaded_by_the_worker(catalog: Catalog, image_server: FileServer) -> None:
    (image_server.root / "caf\u00e9 cr\u00e8me.png").write_bytes(image_bytes(40))  # a non-ASCII name, a space
    (image_server.root / "big.png").write_bytes(image_bytes(41) + b"\0" * 5000)
    ids = catalog.add_many(
        {"image": f"{image_server.url}/{name}", "tenant": "acme", "product_id": name}
        for name in ("caf\u00e9%20cr\u00e8me.png", "missing.png", "big.png")
    )
    downloaded: list[bytes] = []

    def embed(datas: list[bytes]) -> list[np.ndarray]:
        downloaded.extend(datas)
        return fake_vectors(datas)

    limit = len(image_bytes(41)) + 100
    local = Downloads(max_bytes=limit, allow=(ipaddress.ip_network("127.0.0.1/32"),))
    result = queue.process_batch(
        catalog.engine, catalog.registered_model(), embed, batch_size=16, downloads=local
    )
    assert (result.ready, result.failed) == (7, 2)
    assert image_bytes(40) in downloaded
    assert result.errors == {
        ids[1]: f"cannot download {image_server.url}/missing.png: HTTP 404",
        ids[2]: f"{image_server.url}/big.png is over the {limit}-byte limit ({limit + 4900} bytes announced)",
    }


def test_by_default_workers_download_from_public_addresses_only(
    catalog: Catalog, image_server: FileServer
) -> None:
    """A URL on the worker's own machine fails its image with the reason, without a request; the
    rest of the batch is embedded, and the image can be retried once its network is allowed."""
    (image_server.root / "a.png").write_bytes(image_bytes(40))
    image_id = catalog.add(image=f"{image_server.url}/a.png", tenant="acme", product_id="local")
    result = queue.process_batch(catalog.engine, catalog.registered_model(), fake_vectors, batch_size=16)
    assert (result.ready, result.failed) == (6, 1)
    assert result.errors == {
        image_id: f"cannot download {image_server.url}/a.png: 127.0.0.1 is not a public address; "
        "workers download from private networks only when IMGSEARCH_DOWNLOAD_ALLOW lists them"
    }
    assert image_server.paths == []
    assert queue.retry_failed(catalog.engine) == 1
    local = Downloads(allow=(ipaddress.ip_network("127.0.0.0/8"),))
    result = queue.process_batch(
        catalog.engine, catalog.registered_model(), fake_vectors, batch_size=16, downloads=local
    )
    assert (result.ready, result.failed) == (1, 0)
    assert image_server.paths == ["/a.png"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://exa mple.com/a.jpg", "contains spaces or control characters"),
        ("http://[::1/a.jpg", "is not a valid URL: Invalid IPv6 URL"),
        ("http://example.com:99999/a.jpg", "is not a valid URL: Port out of range"),
        ("https:///a.jpg", "must be http:// or https:// with a host"),
        ("https://example.com/" + "a" * 8200, "image URL is 8220 characters long; the limit is 8192"),
    ],
)
def test_urls_workers_cannot_download_are_refused_at_upload(catalog: Catalog, url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        catalog.add(image=url, tenant="acme", product_id="p")


def test_an_unusable_stored_url_fails_alone(catalog: Catalog) -> None:
    """A URL stored before uploads were checked (or written by hand) that urllib can't even
    request fails its image; the rest of the batch is embedded."""
    with catalog.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO imgsearch.images (product_pk, tenant, state, uri) "
                "SELECT (SELECT min(product_pk) FROM imgsearch.images), 'acme', 'pending', u "
                "FROM unnest(ARRAY['http://exa mple.com/a.jpg', 'http://[::1/a.jpg']) u"
            )
        )
    result = queue.process_batch(catalog.engine, catalog.registered_model(), fake_vectors, batch_size=8)
    assert (result.ready, result.failed) == (6, 2)
    assert sorted(result.errors.values()) == [
        "cannot download http://[::1/a.jpg: Invalid IPv6 URL",
        "cannot download http://exa mple.com/a.jpg: URL can't contain control characters. "
        "'exa mple.com' (found at least ' ')",
    ]


def test_retry_failed_puts_a_tenants_failed_images_back(catalog: Catalog) -> None:
    def picky(datas: list[bytes]) -> list[object]:
        return [InvalidImage("not a product photo"), *fake_vectors(datas[1:])]

    queue.process_batch(catalog.engine, catalog.registered_model(), picky, batch_size=6)
    assert queue.retry_failed(catalog.engine, tenant="globex") == 0
    with pytest.raises(InvalidInput, match=r"tenant .* contains control characters"):
        queue.retry_failed(catalog.engine, tenant="ac\x00me")
    assert queue.retry_failed(catalog.engine, tenant="acme") == 1
    with catalog.engine.connect() as conn:
        states = conn.execute(
            text("SELECT state, count(*) FROM imgsearch.images GROUP BY 1 ORDER BY 1")
        ).all()
    assert [tuple(r) for r in states] == [("pending", 1), ("ready", 5)]


def test_database_gone_is_transient() -> None:
    from sqlalchemy import create_engine

    from imgsearch.records import ModelInfo

    engine = create_engine("postgresql+psycopg://x@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(DatabaseUnavailable):
        queue.process_batch(engine, ModelInfo(1, "m", 768, True), fake_vectors, batch_size=4)
    assert issubclass(DatabaseUnavailable, TransientError)
