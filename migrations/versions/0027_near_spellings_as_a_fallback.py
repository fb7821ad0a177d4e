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

MATCH = """
CREATE OR REPLACE FUNCTION imgsearch.lexical_match(query text, plain text, exact text, excluded text, within text)
RETURNS TABLE (product_pk bigint, exact_match boolean, doc_rank real, similarity real)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, @TRGM@, pg_temp
AS $fn$
DECLARE
    everyone boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
        OR pg_has_role(session_user, 'imgsearch_admin', 'MEMBER')
        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant(),
                          CASE WHEN everyone THEN within END);
    tsq tsquery := websearch_to_tsquery(imgsearch.text_search_config(), coalesce(query, ''));
    nq tsquery := CASE WHEN excluded IS NULL THEN NULL
                       ELSE websearch_to_tsquery(imgsearch.text_search_config(), excluded) END;
BEGIN
    IF shop IS NULL AND NOT coalesce(everyone, false) THEN
        RETURN;
    END IF;
    RETURN QUERY  -- the words and the exact id
        SELECT p.id, p.product_id = exact,
               CASE WHEN p.search_doc @@ tsq THEN ts_rank_cd(p.search_doc, tsq, 32) ELSE 0 END::real,
               word_similarity(plain, p.lexical_text)
        FROM imgsearch.products p
        WHERE (p.product_id = exact OR p.search_doc @@ tsq)
          AND (nq IS NULL OR NOT p.search_doc @@ nq)
          AND (shop IS NULL OR p.tenant = shop);
    IF NOT FOUND THEN  -- nothing: the near spellings of the title, brand or id
        RETURN QUERY
            SELECT p.id, false, 0::real, word_similarity(plain, p.lexical_text)
            FROM imgsearch.products p
            WHERE p.lexical_text %> plain
              AND (nq IS NULL OR NOT p.search_doc @@ nq)
              AND (shop IS NULL OR p.tenant = shop);
    END IF;
END
$fn$
"""


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"imgsearch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _functions() -> list[str]:
    """The console's five-argument ``lexical_match`` (migration 0025) and the library's four
    (migration 0020: its shop the caller's login or scope alone), each with the fallback."""
    five = MATCH.replace("@TRGM@", _migration("0020_product_text.py")._schema_of("pg_trgm"))
    declared = (
        "    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant(),\n"
        "                          CASE WHEN everyone THEN within END);\n"
    )
    assert five.count(declared) == 1
    four = five.replace(
        declared, "    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());\n"
    ).replace("excluded text, within text)", "excluded text)")
    return [five, four]


def upgrade() -> None:
    for function in _functions():
        op.execute(function)


def downgrade() -> None:
    m0020 = _migration("0020_product_text.py")
    four = m0020.MATCH.replace("@TRGM@", m0020._schema_of("pg_trgm"))
    five = _migration("0025_console_on_citus.py")._match_within()
    for function in (five, four):
        op.execute(function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
