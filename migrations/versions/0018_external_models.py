"""Models whose vectors come from elsewhere: ``imgsearch model add NAME --dim D`` registers a model
that imgsearch can't load (FashionCLIP, OpenAI or Cohere embeddings, a shop's own model).

``external`` marks it: uploads and imports bring its vectors, searches take query vectors, and
neither the workers nor a text or image query ever try to load it. ``imgsearch.search_text``
says so at once for such a model, instead of waiting for a worker that never answers.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-24
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy import text

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# after the "no active model" check of 0015's _text_embedding
ANCHOR = """    IF model IS NULL THEN
        RAISE EXCEPTION 'the catalog has no active model' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
"""
EXTERNAL = """    IF (SELECT m.external FROM imgsearch.models m WHERE m.id = model) THEN
        RAISE EXCEPTION 'the catalog''s model % embeds no text here: its vectors come from elsewhere '
            '(imgsearch model add); search with imgsearch.search_vector and a query vector made by that model',
            (SELECT m.name FROM imgsearch.models m WHERE m.id = model)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
"""


def _text_embedding_0015() -> str:
    """Migration 0015's ``imgsearch._text_embedding``, as CREATE OR REPLACE, with its schemas filled in."""
    path = Path(__file__).with_name("0015_sql_text_search.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    functions: str = module.FUNCTIONS
    start = functions.index("CREATE FUNCTION imgsearch._text_embedding(")
    end = functions.index("CREATE FUNCTION imgsearch.search_text(")
    body = functions[start:end].rstrip().removesuffix(";")
    schemas = {extension: _schema_of(extension) for extension in ("dblink", "vector")}
    body = body.replace("@DBLINK@", schemas["dblink"]).replace("@VECTOR@", schemas["vector"])
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _schema_of(extension: str) -> str:
    found = op.get_bind().execute(
        text(
            "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = :name"
        ),
        {"name": extension},
    )
    return str(found.scalar_one())


def _text_embedding() -> str:
    """``imgsearch._text_embedding`` as this migration leaves it: 0015's, with the check of a
    model whose vectors come from elsewhere (later migrations edit it from here)."""
    function = _text_embedding_0015()
    assert function.count(ANCHOR) == 1, "migration 0015's _text_embedding changed: place the check again"
    return function.replace(ANCHOR, ANCHOR + EXTERNAL)


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.models ADD COLUMN external boolean NOT NULL DEFAULT false")
    op.execute(_text_embedding())


def downgrade() -> None:
    op.execute(_text_embedding_0015())
    op.execute("ALTER TABLE imgsearch.models DROP COLUMN external")
