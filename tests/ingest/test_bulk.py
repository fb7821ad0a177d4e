"""Bulk import (imgsearch/bulk.py, imgsearch/vector_files.py, `imgsearch import`): every format
round trip, bad files named by file and row with nothing visible, re-runs skip what is stored, an
interrupted import leaves nothing and runs again, searches stay exact while the index is built."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db import vector_index
from imgsearch.errors import DimensionMismatch, InvalidInput
from imgsearch.ingest import bulk
from tests.helpers import clean_environment, exact_similarities, run_cli

DIM = 32
INJECTION = "'; DROP TABLE imgsearch.embeddings; --"


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def metadata(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "product_id": f"sku-{i + offset}",
            "category": f"cat-{(i + offset) % 5}",
            "price": round(1.5 * (i + offset), 2),
            "currency": "EUR",
            "attributes": {"i": i + offset, "color": ["red", "blue"][(i + offset) % 2]},
        }
        for i in range(n)
    ]


def write_parquet(
    path: Path, data: np.ndarray, rows: list[dict[str, Any]], tenant: str | None = "acme"
) -> Path:
    columns: dict[str, Any] = {"embedding": pa.array(list(data), type=pa.list_(pa.float32()))}
    for name in ("product_id", "category", "price", "currency"):
        columns[name] = [row[name] for row in rows]
    columns["attributes"] = [json.dumps(row["attributes"]) for row in rows]
    if tenant is not None:
        columns["tenant"] = [tenant] * len(rows)
    pq.write_table(pa.table(columns), path, row_group_size=1000)
    return path


def counts(catalog: Catalog) -> tuple[int, int, int]:
    with catalog.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(text(f"SELECT count(*) FROM imgsearch.{table}")).scalar_one()
            for table in ("products", "images", "embeddings")
        )


def stored(catalog: Catalog) -> dict[str, tuple[Any, ...]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.product_id, p.tenant, p.category, p.price, p.currency, p.attributes, e.category, e.price, "
                "i.state FROM imgsearch.products p JOIN imgsearch.images i ON i.product_pk = p.id "
                "JOIN imgsearch.embeddings e ON e.image_id = i.id"
            )
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_every_format_round_trips(catalog: Catalog, tmp_path: Path) -> None:
    data = vectors(40)
    rows = metadata(40)
    write_parquet(tmp_path / "a.parquet", data[:10], rows[:10])
    np.save(tmp_path / "b.npy", data[10:20])
    with open(tmp_path / "b.csv", "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["product_id", "tenant", "category", "price", "currency", "attributes"]
        )
        writer.writeheader()
        for row in rows[10:20]:
            writer.writerow({**row, "tenant": "acme", "attributes": json.dumps(row["attributes"])})
    np.save(tmp_path / "c.npy", data[20:30])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[20:30]))
    (tmp_path / "d.jsonl").write_text(
        "".join(
            json.dumps({**row, "embedding": v.tolist()}) + "\n"
            for row, v in zip(rows[30:], data[30:], strict=True)
        )
    )
    assert catalog.import_vectors(tmp_path / "a.parquet") == 10
    assert catalog.import_vectors(tmp_path / "b.npy", metadata=tmp_path / "b.csv") == 10
    assert catalog.import_vectors(str(tmp_path / "c.npy"), metadata=tmp_path / "c.jsonl", tenant="acme") == 10
    assert catalog.import_vectors(tmp_path / "d.jsonl", tenant="acme") == 10
    assert counts(catalog) == (40, 40, 40)
    found = stored(catalog)
    for row in rows:
        tenant, category, price, currency, attributes, e_category, e_price, state = found[row["product_id"]]
        assert (tenant, category, float(price), currency, attributes, state) == (
            "acme",
            row["category"],
            row["price"],
            "EUR",
            row["attributes"],
            "ready",
        )
        assert (e_category, e_price) == (category, price), (
            "the embedding carries its product's filter columns"
        )
    for i in (0, 15, 25, 35):
        (hit,) = catalog.search(vector=data[i], tenant="acme", k=1)
        assert hit.product_id == f"sku-{i}" and hit.score == pytest.approx(1.0, abs=1e-3)
    # rows given as dicts, as add_many takes them
    more = [
        {"embedding": v, "tenant": "globex", "product_id": f"g{i}", "price": 3}
        for i, v in enumerate(vectors(5, 1))
    ]
    assert catalog.import_vectors(more) == 5
    assert counts(catalog) == (45, 45, 45)


def test_running_it_again_imports_nothing_twice(catalog: Catalog, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", vectors(30), metadata(30))
    first = catalog.import_report(path)
    assert (first.rows, first.imported, first.duplicates) == (30, 30, 0)
    again = catalog.import_report(path)
    assert (again.rows, again.imported, again.duplicates, again.index) == (30, 0, 30, "kept")
    assert counts(catalog) == (30, 30, 30)
    # changed prices in a second file update the products, and their embeddings' copies
    rows = metadata(30)
    for row in rows:
        row["price"] = 99.0
    repriced = write_parquet(tmp_path / "b.parquet", vectors(30), rows)
    assert catalog.import_vectors(repriced) == 0
    assert {float(value[2]) for value in stored(catalog).values()} == {99.0}
    assert {float(value[6]) for value in stored(catalog).values()} == {99.0}
    # a row repeated within one file is one image
    doubled = write_parquet(tmp_path / "c.parquet", np.repeat(vectors(2, 7), 2, axis=0), metadata(4, 100))
    result = catalog.import_report(doubled)
    assert (result.imported, result.duplicates) == (2, 2)


def test_a_large_import_builds_the_index_after_the_load(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 50)
    data = vectors(200, 3)
    rows = [{"embedding": v, "tenant": "acme", "product_id": f"p{i}"} for i, v in enumerate(data)]
    result = catalog.import_report(rows)
    assert result.index == "rebuilt" and result.build_seconds is not None
    assert result.maintenance_work_mem == "64MB" and result.parallel_workers is not None
    small = catalog.import_report([{"embedding": vectors(1, 4)[0], "tenant": "acme", "product_id": "one"}])
    assert small.index == "kept"
    with catalog.engine.begin() as conn:
        valid = conn.execute(
            text(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'imgsearch.embeddings_hnsw_m1'::regclass"
            )
        ).scalar_one()
        # 201 rows: a scan and a sort would win otherwise
        conn.execute(
            text(
                "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off"
            )
        )
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 "
                    "ORDER BY embedding::halfvec(32) <=> CAST(:q AS halfvec(32)) LIMIT 5"
                ),
                {"q": str(data[0].tolist())},
            ).scalars()
        )
    assert valid and "embeddings_hnsw_m1" in plan
    forced = catalog.import_report(
        [{"embedding": vectors(1, 5)[0], "tenant": "acme", "product_id": "two"}], rebuild_index=True
    )
    assert forced.index == "rebuilt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("dimension", "b.parquet:5000: embedding has 31 dimensions, expected 32"),
        ("nan", "d.jsonl:7: embedding contains nan at index 3"),
        ("truncated", "not a readable Parquet file"),
        ("metadata-short", "b.csv: has 9 rows, "),
        ("metadata-long", "has more rows than the 10 vectors"),
        ("no-tenant", "d.jsonl:1: tenant is required"),
        ("other-tenant", "d.jsonl:2: tenant 'globex' differs from the import's tenant 'acme'"),
        ("path-image", "d.jsonl:1: image must be an http(s) URL"),
        ("columns", "unknown columns ['colour']"),
        ("price", "d.jsonl:3: price must not be negative"),
        (
            "disagreeing-price",
            "d.jsonl:5: price of product 'sku-1' of tenant 'acme' is 99 here, but 1.5 in /",
        ),
        (
            "disagreeing-attribute",
            "d.jsonl:7: attributes.color of product 'sku-3' of tenant 'acme' is \"green\" here, but \"blue\" in /",
        ),
    ],
)
def test_bad_files_name_file_and_row_and_leave_nothing(
    catalog: Catalog, tmp_path: Path, make: str, message: str
) -> None:
    rows = metadata(10)
    jsonl = [
        {**row, "tenant": "acme", "embedding": v.tolist()} for row, v in zip(rows, vectors(10), strict=True)
    ]
    tenant = None
    path: Path
    extra: dict[str, Any] = {}
    if make == "dimension":
        data = list(vectors(6000))
        data[4999] = data[4999][:31]
        table = pa.table(
            {
                "embedding": pa.array(data, type=pa.list_(pa.float32())),
                "product_id": [f"p{i}" for i in range(6000)],
                "tenant": ["acme"] * 6000,
            }
        )
        path = tmp_path / "b.parquet"
        pq.write_table(table, path)
    elif make == "truncated":
        path = write_parquet(tmp_path / "t.parquet", vectors(10), rows)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif make.startswith("metadata"):
        path = tmp_path / "b.npy"
        np.save(path, vectors(10))
        count = 9 if make == "metadata-short" else 11
        with open(tmp_path / "b.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["product_id", "tenant"])
            writer.writeheader()
            writer.writerows({"product_id": f"p{i}", "tenant": "acme"} for i in range(count))
        extra["metadata"] = tmp_path / "b.csv"
    elif make == "columns":
        path = tmp_path / "c.parquet"
        pq.write_table(
            pa.table(
                {
                    "embedding": pa.array(list(vectors(2)), type=pa.list_(pa.float32())),
                    "product_id": ["a", "b"],
                    "colour": ["r", "g"],
                }
            ),
            path,
        )
    else:
        if make == "nan":
            jsonl[6]["embedding"][3] = float("nan")
        elif make == "no-tenant":
            for row in jsonl:
                del row["tenant"]
        elif make == "other-tenant":
            jsonl[1]["tenant"] = "globex"
            tenant = "acme"
        elif make == "path-image":
            jsonl[0]["image"] = "/etc/passwd"
        elif make == "price":
            jsonl[2]["price"] = -3
        elif make == "disagreeing-price":  # the same product again, at another price
            jsonl[4] = {**jsonl[1], "price": 99, "embedding": jsonl[4]["embedding"]}
        elif make == "disagreeing-attribute":  # its other attributes merge; color disagrees
            jsonl[6] = {
                **jsonl[3],
                "attributes": {"color": "green", "size": 9},
                "embedding": jsonl[6]["embedding"],
            }
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in jsonl))
    with pytest.raises(InvalidInput) as raised:
        catalog.import_vectors(path, tenant=tenant, **extra)
    assert message in str(raised.value)
    if make.startswith("disagreeing"):  # and the row it disagrees with, by its path
        assert str(raised.value).endswith(f"{path}:{2 if make == 'disagreeing-price' else 4}")
    if make == "dimension":
        assert isinstance(raised.value, DimensionMismatch) and raised.value.index == 4999
    assert counts(catalog) == (0, 0, 0), "nothing of a failed import is visible"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("maintenance_work_mem", "lots"),
        ("maintenance_work_mem", "1GB'; DROP TABLE imgsearch.products; --"),
        ("maintenance_work_mem", "9" * 40),
        ("parallel_workers", -1),
        ("parallel_workers", 10**6),
    ],
)
def test_bad_build_settings_are_refused_before_anything_is_written_or_dropped(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, setting: str, value: Any
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 50)
    rows = [{"embedding": v, "tenant": "acme", "product_id": f"p{i}"} for i, v in enumerate(vectors(200, 8))]
    name = "max_parallel_maintenance_workers" if setting == "parallel_workers" else setting
    with pytest.raises(InvalidInput, match=rf"^{name} can't be {re.escape(repr(str(value)))}: "):
        catalog.import_report(rows, **{setting: value})
    assert counts(catalog) == (0, 0, 0)
    with catalog.engine.connect() as conn:  # the HNSW index and every other stayed
        assert conn.execute(
            text(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname IN ('embeddings_hnsw_m1', 'embeddings_tenant_category_price_idx', "
                "'products_search_doc_idx') AND i.indisvalid"
            )
        ).scalar_one() == 3
    assert catalog.import_report(rows).imported == 200  # and the same rows import with good ones


def test_vectors_of_any_scale_import_at_unit_length_and_zeros_are_named(
    catalog: Catalog, tmp_path: Path
) -> None:
    direction = vectors(1, 5)[0].astype(np.float64)
    rows = [
        {"embedding": (direction / np.abs(direction).max() * 1e300).tolist(), "product_id": "huge"},
        {"embedding": [1e-300] * DIM, "product_id": "tiny"},
    ]
    path = tmp_path / "scales.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert catalog.import_vectors(path, tenant="acme") == 2
    with catalog.engine.connect() as conn:
        norms = conn.execute(text("SELECT l2_norm(embedding) FROM imgsearch.embeddings")).scalars().all()
    assert len(norms) == 2 and all(abs(n - 1) < 2e-3 for n in norms)
    (hit,) = catalog.search(vector=direction, tenant="acme", k=1)
    assert hit.product_id == "huge" and hit.distance < 1e-3
    path.write_text(json.dumps({"embedding": [0.0] * DIM, "product_id": "zero"}) + "\n")
    with pytest.raises(InvalidInput, match=r"scales\.jsonl:1.*all zeros"):
        catalog.import_vectors(path, tenant="acme")


def test_injection_strings_are_data(catalog: Catalog) -> None:
    rows = [
        {
            "embedding": vectors(1, 9)[0],
            "tenant": INJECTION,
            "product_id": INJECTION,
            "category": INJECTION,
            "attributes": {INJECTION: INJECTION},
        }
    ]
    assert catalog.import_vectors(rows) == 1
    assert stored(catalog)[INJECTION][:2] == (INJECTION, INJECTION)
    (hit,) = catalog.search(vector=rows[0]["embedding"], tenant=INJECTION, category=INJECTION, k=1)
    assert hit.product_id == INJECTION


def test_the_command(database_url: str, tiny_siglip: Path, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", vectors(25), metadata(25), tenant=None)
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    done = run_cli("import", str(path), "--tenant", "acme", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 25 of 25 rows (0 already stored or repeated)")
    again = run_cli("import", str(path), "--tenant", "acme", **env)
    assert again.stdout.startswith("imported 0 of 25 rows (25 already stored or repeated)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"embedding": [1.0] * 5, "product_id": "x"}) + "\n")
    failed = run_cli("import", str(bad), "--tenant", "acme", **env)
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"imgsearch: {bad}:1: embedding has 5 dimensions, expected 32"
    missing = run_cli("import", str(tmp_path / "none.parquet"), **env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    npy = tmp_path / "v.npy"
    np.save(npy, vectors(3))
    alone = run_cli("import", str(npy), **env)
    assert alone.returncode == 2 and "needs its metadata beside it" in alone.stderr


def test_an_interrupted_import_leaves_nothing_and_runs_again(
    catalog: Catalog, database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    data = vectors(20000, 11)
    with open(path, "w") as handle:
        for i, v in enumerate(data):
            handle.write(
                json.dumps({"embedding": [round(float(x), 5) for x in v], "product_id": f"p{i}"}) + "\n"
            )
    env = clean_environment()
    env.update(IMGSEARCH_DATABASE_URL=database_url, IMGSEARCH_MODEL=str(tiny_siglip), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "imgsearch", "import", str(path), "--tenant", "acme"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    copied = 0
    with catalog.engine.connect() as conn:
        while time.monotonic() < deadline and copied < 3000:
            copied = conn.execute(
                text("SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy")
            ).scalar_one()
            conn.rollback()
            time.sleep(0.05)
    assert copied >= 3000, "the import was copying rows"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert counts(catalog) == (0, 0, 0), "a killed import left nothing visible"
    assert catalog.import_vectors(path, tenant="acme") == 20000
    assert counts(catalog) == (20000, 20000, 20000)


def test_searches_stay_exact_while_the_index_is_built(catalog: Catalog) -> None:
    data = vectors(12000, 12)
    rows = [{"embedding": v, "tenant": "acme", "product_id": f"p{i}"} for i, v in enumerate(data)]
    assert catalog.import_vectors(rows, rebuild_index=True) == 12000
    queries = vectors(30, 13)
    expected = [np.argsort(-exact_similarities(data, q))[:5] for q in queries]
    build = threading.Thread(
        target=vector_index.build_index,
        args=(catalog.engine, catalog.active_model),
        kwargs={"maintenance_work_mem": "64MB", "parallel_workers": 0, "progress": False},
    )
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP INDEX imgsearch.embeddings_hnsw_m1"))
    build.start()
    searched = during = 0
    while build.is_alive() or searched < len(queries):
        i = searched % len(queries)
        building = build.is_alive()
        hits = catalog.search(vector=queries[i], tenant="acme", k=5)
        assert [int(h.product_id[1:]) for h in hits] == list(expected[i])
        searched += 1
        during += building and build.is_alive()
    build.join()
    assert during >= 5, "searches ran while the index was being built"


def test_memory_stays_flat_in_the_row_count(catalog: Catalog, tmp_path: Path) -> None:
    """Rows stream from the file to COPY: six times the rows, a peak of Python and numpy memory
    under twice as high (tracemalloc sees numpy's buffers; a first import warms up what every
    import allocates once). What does grow is bounded: psycopg queues COPY data for its writer
    thread, up to 1,024 blocks of at most 128 KiB. Keeping the rows would take ~15 MB more at 12,000."""
    import tracemalloc

    peaks = {}
    for n in (500, 2_000, 12_000):
        path = write_parquet(tmp_path / f"{n}.parquet", vectors(n, n), metadata(n, offset=n * 10))
        tracemalloc.start()
        try:
            assert catalog.import_vectors(path, rebuild_index=False, progress=False) == n
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[12_000] < 2 * peaks[2_000], peaks


def test_imports_carry_product_text_into_lexical_search(catalog: Catalog, tmp_path: Path) -> None:
    data = vectors(3, 7)
    rows = [
        {"product_id": "t-1", "title": "Linen summer shirt", "brand": "Arket", "description": "Breathes."},
        {"product_id": "t-2", "title": "Wool winter coat", "brand": "Arket"},
        {"product_id": "t-3", "title": None, "brand": None},
    ]
    columns: dict[str, Any] = {"embedding": pa.array(list(data), type=pa.list_(pa.float32()))}
    for name in ("product_id", "title", "brand"):
        columns[name] = [row[name] for row in rows]
    columns["description"] = [row.get("description") for row in rows]
    pq.write_table(pa.table(columns), tmp_path / "text.parquet")
    (tmp_path / "text.jsonl").write_text(
        json.dumps({"product_id": "t-4", "title": "Linen trousers", "embedding": vectors(1, 8)[0].tolist()})
        + "\n"
    )
    assert catalog.import_vectors(tmp_path / "text.parquet", tenant="shop") == 3
    assert catalog.import_vectors(tmp_path / "text.jsonl", tenant="shop") == 1
    linen = catalog.search(text="linen", tenant="shop", mode="lexical", parse=False)
    assert {h.product_id for h in linen} == {"t-1", "t-4"}
    assert catalog.search(text="arket", tenant="shop", mode="lexical", parse=False, total=True).total == 2
    with pytest.raises(InvalidInput, match="title is 1001 characters"):
        catalog.import_vectors(
            [{"embedding": data[0], "tenant": "shop", "product_id": "x", "title": "t" * 1001}]
        )
