"""``search_text``'s timeout says whether any worker listens: none ("start one", and that a worker
just started listens once its model is loaded), or some that didn't answer in time (busy or slow:
wait longer or start more). A worker's listener connects once its model is loaded, under the
application name ``imgsearch text listener`` (imgsearch.work.text_requests.LISTENER_NAME), which
``imgsearch status`` and ``/metrics`` count too.

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-26
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LISTENER_NAME = "imgsearch text listener"  # imgsearch.work.text_requests.LISTENER_NAME

EDITS = [
    ("    conninfo text;\nBEGIN\n", "    conninfo text;\n    listening bigint;\nBEGIN\n"),
    (
        """            RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                '(workers embed the texts of search_text; imgsearch.text_timeout sets the wait)', timeout
                USING ERRCODE = 'query_canceled';
""",
        f"""            SELECT count(*) INTO listening FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.application_name = '{LISTENER_NAME}';
            IF listening = 0 THEN
                RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                    '(none listens; a worker just started listens once its model is loaded: '
                    '`imgsearch status --wait-worker` waits for it)', timeout
                    USING ERRCODE = 'query_canceled';
            END IF;
            RAISE EXCEPTION 'no imgsearch worker answered within % s (% listening): busy or slow; '
                'SET imgsearch.text_timeout to wait longer, or start more with `imgsearch worker`',
                timeout, listening
                USING ERRCODE = 'query_canceled';
""",
    ),
]


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_embedding_0018() -> str:
    """``imgsearch._text_embedding`` as migration 0018 left it (0015's, with its check of a model
    whose vectors come from elsewhere), as CREATE OR REPLACE."""
    return str(_migration("0018_external_models.py")._text_embedding())


def upgrade() -> None:
    body = _text_embedding_0018()
    for old, new in EDITS:
        assert body.count(old) == 1, f"an earlier migration's body changed: {old!r}"
        body = body.replace(old, new)
    op.execute(body)


def downgrade() -> None:
    op.execute(_text_embedding_0018())
