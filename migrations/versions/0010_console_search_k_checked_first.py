"""The SQL console's search names a too-large ``k`` instead of failing on integer overflow.

``imgsearch._search`` declared ``ef_search constant int := greatest(200, 2 * k)``, which
PostgreSQL evaluates on entry, before the body's ``k must be from 1 to 1000`` check: a ``k`` above
1,073,741,823 (still an ``int``) failed with a bare "integer out of range". ``2 * least(k, 1000)``
can't overflow and gives the same value for every ``k`` the check lets through; the body is
migration 0008's, nothing else changes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "    ef_search constant int := greatest(200, 2 * k);\n"
# k is checked in the body, after the declarations: least() keeps 2 * k in range until then
NEW = "    ef_search constant int := greatest(200, 2 * least(k, 1000));\n"


def _search_0008() -> str:
    """Migration 0008's eight-argument ``_search``."""
    path = Path(__file__).with_name("0008_console_similar_product.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    search: str = module.search_with_product_filter()
    return search


def search_with_k_checked_first() -> str:
    search = _search_0008()
    assert search.count(OLD) == 1, "migration 0008's body changed: edit its ef_search again"
    return search.replace(OLD, NEW)


def upgrade() -> None:
    op.execute(search_with_k_checked_first())


def downgrade() -> None:
    op.execute(_search_0008())
