"""A text whose answer came is not asked for again: ``search_text`` asks a worker again after a
second without an answer (a worker killed with the request claimed), and when the answer landed
just before, that ask left a new request behind, which a worker then embedded a second time.

``imgsearch._request_text`` now waits for the worker that is answering the text (its transaction
holds the request it deletes with the answer it stores), then looks for the answer, and asks only
when there is none. A request still waiting is re-armed, as before.

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-26
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _earlier() -> str:
    """Migration 0025's ``_request_text`` (0015's, stamped for Citus)."""
    function: str = _migration("0025_console_on_citus.py")._request_text()
    return function


CHECK = """BEGIN
    -- the worker answering this text deletes its request with the answer it stores, in one
    -- transaction: wait for it (the lock), then look for the answer (a new snapshot)
    PERFORM 1 FROM imgsearch.text_requests r
        WHERE r.model_id = model AND r.text_hash = imgsearch._text_hash(query) FOR UPDATE;
    IF EXISTS (SELECT 1 FROM imgsearch.text_embeddings t
               WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query)) THEN
        RETURN;  -- answered: nothing to ask, no one to wake
    END IF;
    INSERT INTO imgsearch.text_requests"""


def upgrade() -> None:
    earlier = _earlier()
    old = "BEGIN\n    INSERT INTO imgsearch.text_requests"
    assert earlier.count(old) == 1, "migration 0025's _request_text changed"
    op.execute(earlier.replace(old, CHECK))


def downgrade() -> None:
    op.execute(_earlier())
