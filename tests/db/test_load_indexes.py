"""The search indexes a bulk load sets aside (imgsearch/db/load_indexes.py): an import that at
least doubles a table drops them and builds them again after, as the models (and so the
migrations) define them; a smaller one keeps them; an import failing after the drop builds them
again, and those an interrupted one left missing are built by the next import or `imgsearch model
reindex`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.db import load_indexes, vector_index
from imgsearch.errors import InvalidInput
from imgsearch.ingest import bulk
from imgsearch.settings import Settings
from tests.helpers import run_cli

DIM = 32


@pytest.fixture
def catalog(database_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 50)
    with Catalog.open(
        database_url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))
    ) as opened:
        yield opened


def rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    data = np.random.default_rng(offset).standard_normal((n, DIM)).astype(np.float32)
    return [
        {"embedding": v, "tenant": "acme", "product_id": f"p{i + offset}", "category": f"c{i % 3}", "price": i}
        for i, v in enumerate(data)
    ]


def indexes(catalog: Catalog) -> dict[str, tuple[int, bool, str]]:
    """Each set-aside index present: its oid, whether it is valid, its definition."""
    with catalog.engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT c.relname, c.oid, i.indisvalid, pg_get_indexdef(c.oid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ANY(:names)"
            ),
            {"names": list(load_indexes.NAMES)},
        )
        return {str(name): (int(oid), bool(valid), str(ddl)) for name, oid, valid, ddl in found}


def test_an_import_that_doubles_the_table_builds_the_filter_indexes_after_as_the_migrations_made_them(
    catalog: Catalog,
) -> None:
    before = indexes(catalog)
    assert set(before) == set(load_indexes.NAMES) and all(valid for _, valid, _ in before.values())
    result = catalog.import_report(rows(200))
    assert result.index == "rebuilt" and result.set_aside_build_seconds is not None
    after = indexes(catalog)
    assert {name: (valid, ddl) for name, (_, valid, ddl) in after.items()} == {
        name: (valid, ddl) for name, (_, valid, ddl) in before.items()
    }
    assert all(after[name][0] != before[name][0] for name in before)  # dropped and made again
    assert load_indexes.not_valid(catalog.engine) == []
    # the rows are found through them: a shop's category and price range
    with catalog.engine.connect() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"))
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND tenant = 'acme' "
                    "AND category = 'c1' AND price_units BETWEEN 0 AND 100000000"
                )
            ).scalars()
        )
        found = conn.execute(
            text("SELECT count(*) FROM imgsearch.embeddings WHERE model_id = 1 AND category = 'c1'")
        ).scalar_one()
    assert any(f"using {name} " in plan for name in load_indexes.SET_ASIDE["embeddings"]) and found == 67


def test_an_import_smaller_than_the_table_keeps_the_filter_indexes(catalog: Catalog) -> None:
    catalog.import_report(rows(200))
    before = indexes(catalog)
    # rebuilds the HNSW index (forced)...
    result = catalog.import_report(rows(60, 1000), rebuild_index=True)
    assert result.index == "rebuilt"
    # ...but 60 rows don't double a table of 200: its filter indexes took them in as they came
    assert result.set_aside_build_seconds is None and indexes(catalog) == before


def test_an_import_failing_after_the_drop_builds_every_index_again(catalog: Catalog) -> None:
    before = indexes(catalog)
    given = rows(200)
    given[150] = {**given[150], "product_id": "p3", "category": "other"}  # refused after the drop
    with pytest.raises(InvalidInput, match="category of product 'p3'"):
        catalog.import_report(given)
    after = indexes(catalog)
    assert {name: ddl for name, (_, _, ddl) in after.items()} == {name: ddl for name, (_, _, ddl) in before.items()}
    assert all(after[name][0] != before[name][0] for name in before)  # they were dropped
    assert load_indexes.not_valid(catalog.engine) == []
    assert vector_index.index_valid(catalog.engine, catalog.registered_model())
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar_one() == 0


def test_an_index_an_interrupted_import_left_missing_is_built_by_the_next_import_and_by_reindex(
    catalog: Catalog,
) -> None:
    before = indexes(catalog)
    # as an import killed after its drop leaves them (an empty table: at most 0 rows)
    assert load_indexes.set_aside(catalog.engine, 0) == ["embeddings", "products"]
    assert load_indexes.not_valid(catalog.engine) == list(load_indexes.NAMES)
    small = catalog.import_report(rows(3))
    assert small.index == "kept" and small.set_aside_build_seconds is not None
    assert {n: ddl for n, (_, _, ddl) in indexes(catalog).items()} == {n: ddl for n, (_, _, ddl) in before.items()}

    with catalog.engine.begin() as conn:
        conn.execute(text("DROP INDEX imgsearch.embeddings_price_idx"))
    env = {"IMGSEARCH_DATABASE_URL": catalog.engine.url.render_as_string(hide_password=False)}
    run = run_cli("model", "reindex", catalog.model, **env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("built the search indexes a load left missing (1) in ")
    assert load_indexes.not_valid(catalog.engine) == []
    again = run_cli("model", "reindex", catalog.model, **env)  # nothing missing: nothing said
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 1


def test_only_the_tables_the_rows_at_least_double_have_their_indexes_set_aside(catalog: Catalog) -> None:
    given = rows(200)
    for i, row in enumerate(given):  # 100 products of two images each
        row.update(product_id=f"p{i // 2}", category=f"c{i // 2 % 3}", price=i // 2)
    catalog.import_report(given, rebuild_index=False)
    assert load_indexes.set_aside(catalog.engine, 99) == []
    assert load_indexes.not_valid(catalog.engine) == []
    assert load_indexes.set_aside(catalog.engine, 150) == ["products"]
    assert load_indexes.not_valid(catalog.engine) == list(load_indexes.SET_ASIDE["products"])
    restored = load_indexes.restore(catalog.engine)
    assert restored.names == list(load_indexes.SET_ASIDE["products"]) and restored.seconds > 0
    assert load_indexes.not_valid(catalog.engine) == []
    assert load_indexes.restore(catalog.engine) == load_indexes.Restored([], 0.0)


def test_a_set_aside_index_is_defined_by_the_models() -> None:
    ddl = load_indexes.create_statement("embeddings_tenant_category_price_idx")
    assert ddl == (
        "CREATE INDEX CONCURRENTLY embeddings_tenant_category_price_idx ON imgsearch.embeddings "
        "(model_id, tenant, category, price_units) INCLUDE (code, image_id, product_pk, region)"
    )
    assert load_indexes.create_statement("products_lexical_text_idx") == (
        "CREATE INDEX CONCURRENTLY products_lexical_text_idx ON imgsearch.products USING gin (lexical_text gin_trgm_ops)"
    )
