"""Product text: title, description and brand, and the lexical side of a search.

* ``products`` gains ``title``, ``description`` and ``brand``;
* ``search_doc``, a generated, weighted ``tsvector``: the title (weight A), the brand and the
  category (B), the attribute values (C) and the description (D), with a GIN index, for
  ``websearch_to_tsquery`` queries ("phrases", -exclusions, or);
* ``lexical_text``, a generated lower-case text of the title, the brand and the product id, with a
  ``pg_trgm`` GIN index: SKUs, brands and typos ("addidas") a stemmer can't match;
* ``text_search``, one row: the catalog's text-search configuration (default ``english``).
  ``imgsearch.set_text_search_config('german')`` rewrites ``search_doc`` with another one, and
  queries read it through ``imgsearch.text_search_config()``, so both sides always agree.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-24
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("imgsearch_app", "imgsearch_worker", "imgsearch_admin", "imgsearch_console")

# the weighted document; {cfg} is a quoted regconfig literal (format('%L'), or the default below)
DOC = """
    setweight(to_tsvector({cfg}, coalesce(title, '')), 'A')
    || setweight(to_tsvector({cfg}, coalesce(brand, '') || ' ' || coalesce(category, '')), 'B')
    || setweight(jsonb_to_tsvector({cfg}, attributes, '["string", "numeric"]'), 'C')
    || setweight(to_tsvector({cfg}, coalesce(description, '')), 'D')
"""

SET_CONFIG = """
CREATE FUNCTION imgsearch.set_text_search_config(config regconfig) RETURNS regconfig
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    doc text := replace(@DOC@, '{cfg}', format('%L::regconfig', config::text));
BEGIN
    -- a new expression rewrites the column (and its index) for every product, in this transaction
    EXECUTE format('ALTER TABLE imgsearch.products ALTER COLUMN search_doc SET EXPRESSION AS (%s)', doc);
    UPDATE imgsearch.text_search SET config = set_text_search_config.config;
    RETURN config;
END
$fn$
"""


# the products matching a text, without row-level security's fence: under it, PostgreSQL can't use
# the GIN indexes (@@ and %> are not leakproof, so they must wait for the policy's check of every
# row). It restricts to the tenant itself: a console login's own (it can't change it), else the
# transaction's (the library's scope); with neither, only an admin, a worker or a superuser login
# gets every tenant's, others nothing. It returns ids and ranks only: the caller's query reads the
# products under its own policies.
MATCH = """
CREATE FUNCTION imgsearch.lexical_match(query text, plain text, exact text, excluded text)
RETURNS TABLE (product_pk bigint, exact_match boolean, doc_rank real, similarity real)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, @TRGM@, pg_temp
AS $fn$
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
    everyone boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
        OR pg_has_role(session_user, 'imgsearch_admin', 'MEMBER')
        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');
    tsq tsquery := websearch_to_tsquery(imgsearch.text_search_config(), coalesce(query, ''));
    nq tsquery := CASE WHEN excluded IS NULL THEN NULL
                       ELSE websearch_to_tsquery(imgsearch.text_search_config(), excluded) END;
BEGIN
    IF shop IS NULL AND NOT coalesce(everyone, false) THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT p.id, p.product_id = exact,
               CASE WHEN p.search_doc @@ tsq THEN ts_rank_cd(p.search_doc, tsq, 32) ELSE 0 END::real,
               word_similarity(plain, p.lexical_text)
        FROM imgsearch.products p
        WHERE (p.product_id = exact OR p.search_doc @@ tsq OR p.lexical_text %> plain)
          AND (nq IS NULL OR NOT p.search_doc @@ nq)
          AND (shop IS NULL OR p.tenant = shop);
END
$fn$
"""


def _schema_of(extension: str) -> str:
    """The schema an extension lives in, quoted: migration 0015's ``_schema_of``."""
    path = Path(__file__).with_name("0015_sql_text_search.py")
    spec = importlib.util.spec_from_file_location("imgsearch_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: str = module._schema_of(extension)
    return schema


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        """
        ALTER TABLE imgsearch.products
            ADD COLUMN title text,
            ADD COLUMN description text,
            ADD COLUMN brand text,
            ADD CONSTRAINT products_title_length_check CHECK (char_length(title) <= 1000),
            ADD CONSTRAINT products_brand_length_check CHECK (char_length(brand) <= 1000),
            ADD CONSTRAINT products_description_length_check CHECK (char_length(description) <= 100000)
        """
    )
    doc = DOC.format(cfg="'english'::regconfig")
    op.execute(
        f"ALTER TABLE imgsearch.products ADD COLUMN search_doc tsvector GENERATED ALWAYS AS ({doc}) STORED"
    )
    op.execute(
        "ALTER TABLE imgsearch.products ADD COLUMN lexical_text text GENERATED ALWAYS AS ("
        "lower(coalesce(title, '') || ' ' || coalesce(brand, '') || ' ' || product_id)) STORED"
    )
    op.execute("CREATE INDEX products_search_doc_idx ON imgsearch.products USING gin (search_doc)")
    op.execute(
        "CREATE INDEX products_lexical_text_idx ON imgsearch.products USING gin (lexical_text gin_trgm_ops)"
    )
    # an exact SKU typed into the search box, without a tenant (an admin's search)
    op.execute("CREATE INDEX products_product_id_idx ON imgsearch.products (product_id)")
    # the last change to a tenant's (or the catalog's) products: when to read its vocabulary again
    op.execute("CREATE INDEX products_tenant_updated_at_idx ON imgsearch.products (tenant, updated_at)")
    op.execute("CREATE INDEX products_updated_at_idx ON imgsearch.products (updated_at)")

    op.execute(
        """
        CREATE TABLE imgsearch.text_search (
            one boolean DEFAULT true CONSTRAINT text_search_one_check CHECK (one),
            CONSTRAINT text_search_pkey PRIMARY KEY (one),
            config regconfig NOT NULL
        )
        """
    )
    op.execute("INSERT INTO imgsearch.text_search (config) VALUES ('english')")
    op.execute(f"GRANT SELECT ON imgsearch.text_search TO {', '.join(ROLES)}")
    op.execute(
        "CREATE FUNCTION imgsearch.text_search_config() RETURNS regconfig LANGUAGE sql STABLE "
        "AS $$ SELECT config FROM imgsearch.text_search $$"
    )
    escaped = DOC.replace("'", "''")
    op.execute(SET_CONFIG.replace("@DOC@", f"'{escaped}'"))
    op.execute(MATCH.replace("@TRGM@", _schema_of("pg_trgm")))
    op.execute("REVOKE ALL ON FUNCTION imgsearch.lexical_match(text, text, text, text) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch.lexical_match(text, text, text, text) TO {', '.join(ROLES)}")
    op.execute("REVOKE ALL ON FUNCTION imgsearch.set_text_search_config(regconfig) FROM PUBLIC")
    op.execute("GRANT EXECUTE ON FUNCTION imgsearch.set_text_search_config(regconfig) TO imgsearch_admin")


def downgrade() -> None:
    op.execute("DROP FUNCTION imgsearch.lexical_match(text, text, text, text)")
    op.execute("DROP FUNCTION imgsearch.set_text_search_config(regconfig)")
    op.execute("DROP FUNCTION imgsearch.text_search_config()")
    op.execute("DROP TABLE imgsearch.text_search")
    op.execute("DROP INDEX imgsearch.products_product_id_idx")
    op.execute("DROP INDEX imgsearch.products_tenant_updated_at_idx, imgsearch.products_updated_at_idx")
    op.execute(
        "ALTER TABLE imgsearch.products DROP COLUMN lexical_text, DROP COLUMN search_doc, "
        "DROP COLUMN title, DROP COLUMN description, DROP COLUMN brand"
    )
