"""The indexes a bulk load sets aside: those only searches read, dropped before the load and built
after it.

An entry written into an index in another order than the table's costs more than the same entry
sorted into a fresh build. The index carrying each embedding's binary code (migration 0043, 232
bytes an entry, keyed by shop, category and price while an import writes in image order) cost
0.6-2.1 s of a 100,000-row insert and builds in 0.4 s with its two neighbours; the products'
search indexes (full text, trigrams, attributes, filters) cost 0.8 s of their upsert
(bench/ingest/import_costs.py). An import that rebuilds the model's HNSW index
(:mod:`imgsearch.ingest.bulk`) sets a table's aside when its new rows at least double it.

Only indexes that serve searches are set aside: keys, and the indexes that writes and triggers
look rows up by (an embedding's product, which a changed price's trigger reads; a product's SKU
and last change, which syncs read), stay. Meanwhile searches keep working, with the filters' rows
read from the tables. Their definitions are the models' (:mod:`imgsearch.db.models`, which the
migrations match), so an index a crash left missing or invalid is built again by the next import
or ``imgsearch model reindex`` (:func:`restore`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Engine, Index, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex

from imgsearch.db.engine import apply_settings, connect
from imgsearch.db.models import SCHEMA, Embedding, Product

SET_ASIDE: dict[str, tuple[str, ...]] = {
    "embeddings": (
        "embeddings_category_price_idx",
        "embeddings_price_idx",
        "embeddings_tenant_category_price_idx",
    ),
    "products": (
        "products_search_doc_idx",
        "products_lexical_text_idx",
        "products_attributes_idx",
        "products_tenant_category_idx",
        "products_tenant_price_idx",
        "products_category_idx",
        "products_price_idx",
    ),
}
NAMES = tuple(name for names in SET_ASIDE.values() for name in names)


def _index(name: str) -> Index:
    for model in (Embedding, Product):
        for index in cast(Table, model.__table__).indexes:
            if index.name == name:
                return index
    raise KeyError(name)


def create_statement(name: str) -> str:
    """``CREATE INDEX CONCURRENTLY`` of the set-aside index ``name``, as the models define it."""
    ddl = str(CreateIndex(_index(name)).compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    assert ddl.startswith("CREATE INDEX "), ddl
    return "CREATE INDEX CONCURRENTLY " + ddl.removeprefix("CREATE INDEX ")


_STATES = f"""
SELECT n.name, i.indisvalid FROM unnest(%s::text[]) WITH ORDINALITY AS n (name, ord)
LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = to_regclass('{SCHEMA}.' || n.name)
ORDER BY n.ord
"""


def not_valid(engine: Engine) -> list[str]:
    """The set-aside indexes that are missing or invalid (a load's, interrupted)."""
    with connect(engine.url, "to read the indexes") as conn:
        return [str(name) for name, valid in conn.execute(_STATES, (list(NAMES),)) if not valid]


def set_aside(engine: Engine, new_rows: int) -> list[str]:
    """Drop the set-aside indexes of each table holding at most ``new_rows`` rows (counted, but no
    further than one past them); the tables' names. ``CONCURRENTLY``, on connections of their
    own: each waits only for the transactions using its table, so the import's must not have
    touched them yet."""
    chosen = []
    with connect(engine.url, "to set indexes aside") as conn:
        for table, names in SET_ASIDE.items():
            found = conn.execute(
                f"SELECT count(*) FROM (SELECT FROM {SCHEMA}.{table} LIMIT %s) AS r", (int(new_rows) + 1,)
            ).fetchone()
            if not found or found[0] > new_rows:
                continue
            for name in names:
                conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{name}")
            chosen.append(table)
    return chosen


@dataclass(frozen=True)
class Restored:
    names: list[str]  # the indexes built, none when every one was there
    seconds: float


def restore(engine: Engine, *, maintenance_work_mem: str | None = None) -> Restored:
    """Build each set-aside index that is missing or invalid (``CONCURRENTLY``: searches and
    writes go on)."""
    missing = not_valid(engine)
    if not missing:
        return Restored([], 0.0)
    started = time.perf_counter()
    with connect(engine.url, "to build the set-aside indexes") as conn:
        if maintenance_work_mem:
            apply_settings(conn, {"maintenance_work_mem": maintenance_work_mem})
        for name in missing:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SCHEMA}.{name}")  # an invalid one's leftover
            conn.execute(create_statement(name))
    return Restored(missing, time.perf_counter() - started)
