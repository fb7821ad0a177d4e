"""The SQL console's search rejects the arguments the library rejects.

``imgsearch.search_vector`` checked ``k``, a NULL vector and its dimension, but an all-zero
vector returned rows with NaN distances (cosine distance is undefined for it), and a NaN or
infinite price bound, or ``price_min`` above ``price_max``, quietly returned no rows. Each is now
an error naming the argument, with the library's wording (``catalog.search`` raises
``InvalidInput``/``InvalidQuery`` for the same values). The search itself is migration 0006's.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# after the dimension check of 0006's body
ANCHOR = """            USING ERRCODE = 'data_exception';
    END IF;
"""
CHECKS = """    IF l2_norm(query) = 0 THEN
        RAISE EXCEPTION 'query vector is all zeros; cosine distance is undefined for a zero vector'
            USING ERRCODE = 'data_exception';
    END IF;
    IF price_min IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'price_min must be finite, got %', price_min USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF price_max IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'price_max must be finite, got %', price_max USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF price_min > price_max THEN
        RAISE EXCEPTION 'price_min % is above price_max %', price_min, price_max
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
"""


def _search_0006() -> str:
    path = Path(__file__).with_name("0006_console_search_strategy.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    search: str = module.SEARCH
    return search


def search_with_checks() -> str:
    """``imgsearch._search`` as this migration leaves it: 0006's body with the checks."""
    search = _search_0006()
    assert search.count(ANCHOR) == 1, "migration 0006's body changed: place the checks again"
    return search.replace(ANCHOR, ANCHOR + CHECKS)


def upgrade() -> None:
    op.execute(search_with_checks())


def downgrade() -> None:
    op.execute(_search_0006())
