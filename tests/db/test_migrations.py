"""Schema through Alembic: up, down and up again, and the models agreeing with the migrations."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from imgsearch.db import migrate
from imgsearch.db.engine import make_engine
from imgsearch.db.models import SCHEMA, Base

TABLES = {
    "models",
    "facet_members",
    "facet_counts",
    "image_counts",
    "products",
    "images",
    "image_products",
    "embeddings",
    "tenant_logins",
    "api_keys",
    "text_embeddings",
    "text_requests",
    "filter_index_rules",
    "binary_code_checks",
    "filter_indexes",
    "region_rules",
    "text_search",
    "search_queries",
    "search_events",
    "event_ids",
    "boosts",
    "query_adapters",
    "query_adapter_rows",
    "webhook_endpoints",
    "webhook_events",
    "webhook_deliveries",
    "alembic_version",
}


def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    return set(inspect(engine).get_table_names(schema=SCHEMA))


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    assert _tables(engine) == TABLES
    assert migrate.current(engine) == migrate.head()
    migrate.downgrade(engine, "base")
    assert _tables(engine) == {"alembic_version"}
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert _tables(engine) == TABLES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    engine.dispose()


def test_models_match_migrations(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "version_table_schema": SCHEMA,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
            },
        )
        diff = [d for d in compare_metadata(ctx, Base.metadata) if "alembic_version" not in str(d)]
    engine.dispose()
    assert diff == []


def test_filter_indexes_exist(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'imgsearch'"))
        indexes = {name: definition for name, definition in rows}
    engine.dispose()
    assert "USING gin (attributes jsonb_path_ops)" in indexes["products_attributes_idx"]
    assert "(tenant, category)" in indexes["products_tenant_category_idx"]
    assert "(tenant, price_units)" in indexes["products_tenant_price_idx"]
    assert "images_tenant_sha256_key" in indexes


def test_the_first_embedding_registers_the_model_with_its_hnsw_index(database_url: str) -> None:
    from imgsearch import Catalog
    from tests.helpers import unit

    with Catalog.open(database_url) as catalog:
        assert not catalog.active_model.registered  # opening registers nothing
        catalog.add(embedding=unit(768), tenant="acme", product_id="p")
        assert catalog.active_model.registered
    with catalog.engine.connect() as conn:
        indexdef = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
            {"name": f"embeddings_hnsw_m{catalog.active_model.id}"},
        ).scalar_one()
    assert "USING hnsw (((embedding)::halfvec(768)) halfvec_cosine_ops)" in indexdef
    assert f"WHERE (model_id = {catalog.active_model.id})" in indexdef


@pytest.mark.parametrize("revision", ["base"])
def test_downgrade_from_populated_database(database_url: str, revision: str) -> None:
    from imgsearch import Catalog
    from tests.helpers import unit

    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="sku")
        migrate.downgrade(catalog.engine, revision)
        assert _tables(catalog.engine) == {"alembic_version"}


def test_0009_sets_ef_construction_on_existing_indexes(database_url: str) -> None:
    """Indexes of models registered before 0009 link new rows with ef_construction 128 after it,
    and 64 again after a downgrade; m stays."""
    from imgsearch import Catalog

    def options(engine) -> list[str]:  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            return sorted(
                conn.execute(
                    text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:name)"),
                    {"name": f"imgsearch.embeddings_hnsw_m{model_id}"},
                ).scalar_one()
            )

    with Catalog.open(database_url) as catalog:
        model_id = catalog.registered_model().id
        migrate.downgrade(catalog.engine, "0008")
        assert options(catalog.engine) == ["ef_construction=64", "m=16"]
        migrate.upgrade(catalog.engine)
        assert options(catalog.engine) == ["ef_construction=128", "m=16"]
        assert migrate.current(catalog.engine) == migrate.head()


def test_0017_repairs_zero_embeddings_and_nan_prices_then_refuses_them(database_url: str) -> None:
    """Rows stored before 0017 that broke every search (an all-zero embedding, a NaN price) are
    repaired: the image is embedded again when it can be, else failed naming why."""
    from imgsearch import Catalog
    from tests.helpers import image_bytes, unit

    with Catalog.open(database_url) as catalog:
        picture = catalog.add(image=image_bytes(1), tenant="acme", product_id="photo", price=5)
        vector_only = catalog.add(embedding=unit(768, 1), tenant="acme", product_id="vec", price=7)
        good = catalog.add(embedding=unit(768, 2), tenant="acme", product_id="good", price=9)
        migrate.downgrade(catalog.engine, "0016")
        with catalog.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
                    "SELECT :m, id, product_pk, tenant, array_fill(0, ARRAY[768])::halfvec "
                    "FROM imgsearch.images WHERE id = :picture"
                ),
                {"m": catalog.active_model.id, "picture": picture},
            )
            conn.execute(text("UPDATE imgsearch.images SET state = 'ready' WHERE id = :i"), {"i": picture})
            conn.execute(
                text(
                    "UPDATE imgsearch.embeddings SET embedding = array_fill(0, ARRAY[768])::halfvec WHERE image_id = :i"
                ),
                {"i": vector_only},
            )
            conn.execute(text("UPDATE imgsearch.products SET price = 'NaN' WHERE product_id = 'good'"))
        migrate.upgrade(catalog.engine)
        records = {i: catalog.get(i) for i in (picture, vector_only, good)}
        assert (records[picture].state, records[picture].has_embedding) == ("pending", False)
        assert records[vector_only].state == "failed" and "all zeros" in (records[vector_only].error or "")
        assert (records[good].state, records[good].price) == ("ready", None)
        hits = catalog.search(vector=unit(768, 2), k=10)
        assert [h.image_id for h in hits] == [good]
        migrate.downgrade(catalog.engine, "0016")
        migrate.upgrade(catalog.engine)


def test_0054_counts_the_images_a_catalog_holds(database_url: str) -> None:
    """The images stored before 0054 are counted by it; the triggers count those after."""
    from imgsearch import Catalog
    from imgsearch.work import progress
    from tests.helpers import image_bytes, unit

    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768, 1), tenant="acme", product_id="a")
        migrate.downgrade(catalog.engine, "0053")
        catalog.add(image=image_bytes(1), tenant="acme", product_id="b")
        catalog.add(image=image_bytes(2), tenant="globex", product_id="c")
        with catalog.engine.begin() as conn:
            conn.execute(text("UPDATE imgsearch.images SET state = 'failed', error = 'bad' WHERE tenant = 'globex'"))
        migrate.upgrade(catalog.engine)
        catalog.add(embedding=unit(768, 2), tenant="globex", product_id="d")
        assert progress.status(catalog.engine, 5, tenant="acme").counts == {
            "pending": 1, "embedding": 0, "ready": 1, "failed": 0
        }  # fmt: skip
        status = progress.status(catalog.engine, 5)
        assert status.counts == {"pending": 1, "embedding": 0, "ready": 2, "failed": 1}
        assert [(tenant, error) for _, tenant, error in status.latest_errors] == [("globex", "bad")]


def test_0055_counts_the_categories_a_catalog_holds(database_url: str) -> None:
    """The products counted before 0055 are counted in their categories by it (their shops'
    counts kept as they were); the triggers count those after; down and up again, the same."""
    from imgsearch import Catalog
    from imgsearch.search import facets
    from imgsearch.search.filters import Filters
    from tests.helpers import unit

    columns = ("total", "category", "brand", "attributes", "price")

    def kept_and_one_pass(catalog: Catalog, categories: list[str] | None) -> tuple[tuple[object, ...], ...]:
        params = {"facets_model": catalog.active_model.id, "facets_tenant": "acme", "facets_categories": categories}
        shop = Filters(tenant="acme", category=categories)
        with catalog.engine.begin() as conn:
            kept = conn.execute(facets._KEPT if categories is None else facets._KEPT_IN_CATEGORIES, params).one()
            counted = conn.execute(facets.statement(catalog.active_model, shop, False), shop.params()).one()
        return tuple(tuple(getattr(row, c) for c in columns) for row in (kept, counted))

    def shop_total(catalog: Catalog) -> int:
        with catalog.engine.connect() as conn:
            return int(
                conn.execute(text("SELECT sum(n) FROM imgsearch.facet_counts WHERE facet = 'total'")).scalar_one()
            )

    with Catalog.open(database_url) as catalog:
        migrate.downgrade(catalog.engine, "0054")
        for i in range(6):
            catalog.add(
                embedding=unit(768, i), tenant="acme", product_id=f"p{i}", category=f"c{i % 2}", brand=f"b{i % 3}",
                price=10 * i + 0.5, attributes={"colour": f"k{i % 2}"},
            )  # fmt: skip
        assert shop_total(catalog) == 6
        for n in range(2):  # up (the catalog's products counted in their categories), then down
            migrate.upgrade(catalog.engine)
            catalog.add(embedding=unit(768, 9 + n), tenant="acme", product_id=f"q{n}", category="c1", price=3)
            totals = {None: 7 + n, ("c0",): 3, ("c1",): 4 + n, ("c0", "c1"): 7 + n}
            for scope, total in totals.items():
                kept, counted = kept_and_one_pass(catalog, None if scope is None else list(scope))
                assert kept == counted and kept[0] == total
            migrate.downgrade(catalog.engine, "0054")
            assert shop_total(catalog) == 7 + n  # the shops' counts, as they were
        migrate.upgrade(catalog.engine)
