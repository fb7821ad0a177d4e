"""Changing products' fields (a price feed, a new category) without uploading their images again.

Each row names a product by tenant and product id and gives the fields to set: ``category``,
``price``, ``currency``, ``title``, ``description``, ``brand`` (``None`` clears them) and ``attributes`` (the whole document, replaced).
Fields a row leaves out keep their values. Every row is checked first, and the rows are written in
one transaction: an unknown product fails the call with nothing written.

Only products whose values change are written. That matters for price and category: each
embedding carries its product's copy of them for filtered searches (migration 0004), and a
changed copy is a new row version, which pgvector inserts into the HNSW index again (about 1 ms
an image; docs/benchmarks.md, "Product updates"). A feed that repeats yesterday's prices costs
the lookups only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import checks

FIELDS = ("category", "price", "currency", "attributes", *checks.TEXT_FIELDS)
CHUNK = 1000  # rows per UPDATE: about 1 s when each changes a price (its embeddings' HNSW entries)
ROW_KEYS = frozenset({"tenant", "product_id", *FIELDS})

# One statement per tenant; the rows travel as arrays, so their number doesn't change the SQL.
_LOCK = text(
    """SELECT p.product_id FROM imgsearch.products p
       WHERE p.tenant = :tenant AND p.product_id = ANY(CAST(:product_ids AS text[]))
       ORDER BY p.product_id COLLATE "C"
       FOR UPDATE"""
)
_UPDATE = text(
    """UPDATE imgsearch.products p SET
           category = CASE WHEN v.set_category THEN v.category ELSE p.category END,
           price = CASE WHEN v.set_price THEN v.price ELSE p.price END,
           currency = CASE WHEN v.set_currency THEN v.currency ELSE p.currency END,
           attributes = CASE WHEN v.set_attributes THEN v.attributes::jsonb ELSE p.attributes END,
           title = CASE WHEN v.set_title THEN v.title ELSE p.title END,
           description = CASE WHEN v.set_description THEN v.description ELSE p.description END,
           brand = CASE WHEN v.set_brand THEN v.brand ELSE p.brand END,
           updated_at = now()
       FROM unnest(
           CAST(:product_ids AS text[]),
           CAST(:set_category AS boolean[]), CAST(:category AS text[]),
           CAST(:set_price AS boolean[]), CAST(:price AS numeric[]),
           CAST(:set_currency AS boolean[]), CAST(:currency AS text[]),
           CAST(:set_attributes AS boolean[]), CAST(:attributes AS text[]),
           CAST(:set_title AS boolean[]), CAST(:title AS text[]),
           CAST(:set_description AS boolean[]), CAST(:description AS text[]),
           CAST(:set_brand AS boolean[]), CAST(:brand AS text[])
       ) AS v(product_id, set_category, category, set_price, price, set_currency, currency,
              set_attributes, attributes, set_title, title, set_description, description, set_brand, brand)
       WHERE p.tenant = :tenant AND p.product_id = v.product_id
         AND ((v.set_category AND p.category IS DISTINCT FROM v.category)
              OR (v.set_price AND p.price IS DISTINCT FROM v.price)
              OR (v.set_currency AND p.currency IS DISTINCT FROM v.currency)
              OR (v.set_attributes AND p.attributes IS DISTINCT FROM v.attributes::jsonb)
              OR (v.set_title AND p.title IS DISTINCT FROM v.title)
              OR (v.set_description AND p.description IS DISTINCT FROM v.description)
              OR (v.set_brand AND p.brand IS DISTINCT FROM v.brand))
       RETURNING p.product_id"""
)


@dataclass(frozen=True)
class ProductChange:
    """One checked row: the product and the fields to set (absent ones keep their values), and
    how errors name the row (``"row 3"``, ``"feed.csv:4"``; empty for a single product)."""

    tenant: str
    product_id: str
    fields: dict[str, Any]
    name: str = ""
    index: int | None = None  # position in the caller's rows


def prepare(row: Mapping[str, Any]) -> ProductChange:
    """Check one row; :class:`InvalidInput` naming the bad field."""
    tenant, product_id = checks.product_row(row, ROW_KEYS)
    fields: dict[str, Any] = {}
    for key in FIELDS:
        if key not in row:
            continue
        value = row[key]
        if key == "category":
            fields[key] = checks.identifier_field(value, "category", required=False)
        elif key == "price":
            fields[key] = checks.price(value)
        elif key == "currency":
            fields[key] = checks.currency(value)
        elif key in checks.TEXT_FIELDS:
            fields[key] = checks.product_text(value, key)
        else:
            fields[key] = checks.attributes({} if value is None else value, "attributes")
    if not fields:
        raise InvalidInput(f"nothing to change: give at least one of {list(FIELDS)}")
    return ProductChange(tenant=tenant, product_id=product_id, fields=fields)


def prepare_all(rows: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None) -> list[ProductChange]:
    """Check every row first; the first bad one fails the call, named by ``names[i]`` (by
    default ``"row i"``). Rows of one product merge (a feed may list it twice); two that set one of
    its fields to different values are an error naming both."""
    listed = list(rows)
    if names is not None and len(names) != len(listed):
        raise InvalidInput(f"names must name every row: got {len(names)} names for {len(listed)} rows")
    merged: dict[tuple[str, str], ProductChange] = {}
    given: checks.Given = {}
    for index, row in enumerate(listed):
        name = f"row {index}" if names is None else names[index]
        try:
            change = replace(prepare(row), name=name, index=index)
        except InvalidInput as exc:
            exc.at_row(index, name)
            raise
        checks.agree(given, change.tenant, change.product_id, change.fields, index, name)
        key = (change.tenant, change.product_id)
        earlier = merged.get(key)
        merged[key] = (
            change if earlier is None else replace(earlier, fields={**earlier.fields, **change.fields})
        )
    changes = list(merged.values())
    return changes


def apply(
    conn: Connection, changes: list[ProductChange], progress: Callable[[int], None] | None = None
) -> int:
    """Write checked changes in the caller's transaction, each tenant's under its row-level
    security; the number of products whose values changed. Every product is looked up (and
    locked) before anything is written: :class:`NotFound` names the first that doesn't exist
    (and its row, when the change has a name).
    ``progress`` is called with the number of rows done after each chunk of :data:`CHUNK`."""
    by_tenant: dict[str, list[ProductChange]] = {}
    for change in changes:
        by_tenant.setdefault(change.tenant, []).append(change)
    for tenant, rows in by_tenant.items():
        tenancy.scope(conn, tenant)
        ids = [change.product_id for change in rows]
        found = set(conn.execute(_LOCK, {"tenant": tenant, "product_ids": ids}).scalars())
        missing = [change for change in rows if change.product_id not in found]
        if missing:
            change = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            unknown = NotFound(
                f"tenant {tenant!r} has no product {change.product_id!r}{more}; nothing updated"
            )
            raise unknown.at_row(change.index, change.name) if change.name else unknown
    changed = 0
    for tenant, rows in by_tenant.items():
        tenancy.scope(conn, tenant)
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            changed += len(conn.execute(_UPDATE, _columns(tenant, part)).all())
            if progress is not None:
                progress(len(part))
    return changed


def update_one(engine: Engine, row: Mapping[str, Any]) -> bool:
    """:meth:`imgsearch.Catalog.update_product`: whether a value changed."""
    change = prepare(row)
    with engine.begin() as conn:
        return apply(conn, [change]) == 1


def update_many(
    engine: Engine,
    rows: Iterable[Mapping[str, Any]],
    *,
    names: Sequence[str] | None = None,
    progress: bool | None = None,
) -> int:
    """:meth:`imgsearch.Catalog.update_products`: every row checked, then one transaction, with a
    progress bar (by default only when stderr is a terminal); how many products changed."""
    from tqdm import tqdm

    changes = prepare_all(rows, names)
    if not changes:
        return 0
    show = sys.stderr.isatty() if progress is None else progress
    with (
        engine.begin() as conn,
        tqdm(total=len(changes), desc="updating", unit="product", disable=not show) as bar,
    ):
        return apply(conn, changes, progress=bar.update)


def _columns(tenant: str, changes: list[ProductChange]) -> dict[str, Any]:
    params: dict[str, Any] = {"tenant": tenant, "product_ids": [c.product_id for c in changes]}
    for key in FIELDS:
        params[f"set_{key}"] = [key in c.fields for c in changes]
        values = [c.fields.get(key) for c in changes]
        if key == "attributes":
            values = [None if v is None else json.dumps(v, allow_nan=False) for v in values]
        params[key] = values
    return params
