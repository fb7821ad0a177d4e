"""Near spellings are a fallback: ``imgsearch.lexical_match`` reads the trigram index only when
the words and the product id match nothing.

A text matched a product by its words (``websearch_to_tsquery`` over the weighted document), by
its exact product id, or by a close trigram match of its title, brand or id (``%>``), all three
at once. The trigram match reads the posting lists of every trigram of the text: 12-16 ms at
100,000 products whatever the words found, most of a lexical search, and for a common word
thousands of near spellings ranked below every product its words matched. Now, as Typesense
searches with typos only when the exact tokens find nothing (``typo_tokens_threshold`` 1): the
words and the id first; when they match no product of the shop, the near spellings ("addidas",
"SKU-10", "runing shoe"). A text's matches, ranks, totals and facets follow the same rule in the
library, over HTTP and in the console. Arguments and result columns are migration 0025's.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-25
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the edits of migrations 0020's and 0025's bodies: the words and the id, then the near spellings
FALLBACK = [
    ("    RETURN QUERY\n", "    RETURN QUERY  -- the words and the exact id\n"),
    (
        "WHERE (p.product_id = exact OR p.search_doc @@ tsq OR p.lexical_text %> plain)\n",
        "WHERE (p.product_id = exact OR p.search_doc @@ tsq)\n",
    ),
    (
        "          AND (shop IS NULL OR p.tenant = shop);\nEND\n",
        "          AND (shop IS NULL OR p.tenant = shop);\n"
        "    IF NOT FOUND THEN  -- nothing: the near spellings of the title, brand or id\n"
        "        RETURN QUERY\n"
        "            SELECT p.id, false, 0::real, word_similarity(plain, p.lexical_text)\n"
        "            FROM imgsearch.products p\n"
        "            WHERE p.lexical_text %> plain\n"
        "              AND (nq IS NULL OR NOT p.search_doc @@ nq)\n"
        "              AND (shop IS NULL OR p.tenant = shop);\n"
        "    END IF;\nEND\n",
    ),
]


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _earlier() -> list[str]:
    """The library's four-argument ``lexical_match`` (migration 0020: its shop the caller's login
    or scope alone) and the console's five (migration 0025), as they were."""
    m0020 = _migration("0020_product_text.py")
    four = m0020.MATCH.replace("@TRGM@", m0020._schema_of("pg_trgm"))
    five = _migration("0025_console_on_citus.py")._match_within()
    return [body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) for body in (four, five)]


def upgrade() -> None:
    edited = _migration("0025_console_on_citus.py")._edited
    for body in _earlier():
        op.execute(edited(body, FALLBACK))


def downgrade() -> None:
    for body in _earlier():
        op.execute(body)
