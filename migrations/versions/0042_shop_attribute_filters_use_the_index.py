"""A shop's attribute filter reads the attributes' index (issue 72).

Under row-level security PostgreSQL lets an index serve a condition only when its operator is
``LEAKPROOF`` (or the condition is the policy's own), and jsonb's ``@>`` (``jsonb_contains``) is
not: a shop's search filtering on attributes read every product of the shop and tested each
(bench/search/shop_attributes.py: 23.8x the same search without a shop, at 1M products).

* ``imgsearch._shop_products(wanted, most)``: the ids of the caller's shop's products whose
  attributes contain ``wanted``, read through ``products_attributes_idx`` as the owner; NULL when
  more than ``most`` match (a broad filter: the search's one HNSW pass finds its rows among the
  nearest, with no list) or when the caller has no shop. The shop is the one the policies give
  the caller: a console login's own, else ``imgsearch.tenant`` (``imgsearch_app``'s, which sets
  it). Only ``imgsearch_app`` may run it. The search then keeps rows whose ``product_pk`` is in
  the list (bigint equality: leakproof, an index condition under the policies, which still apply
  to every row it reads) beside the ``@>`` condition itself.

The whole definition is held here (imgsearch/db/sql/functions/_shop_products.sql is written from it).

Revision ID: 0042
Revises: 0041
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0042"
down_revision: str | None = "0041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION imgsearch._shop_products(wanted jsonb, most integer)
 RETURNS bigint[]
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET plan_cache_mode TO 'force_custom_plan'
AS $function$
-- The ids of the caller's shop's products whose attributes contain `wanted`, when at most `most`
-- do; NULL when more do, or when the caller has no shop (migration 0042).
--
-- A shop's search runs under row-level security, where jsonb's @> (not LEAKPROOF) can't use
-- products_attributes_idx. This function reads the index as the owner, for the shop the policies
-- give the caller (a console login's own, whatever imgsearch.tenant says; else imgsearch.tenant),
-- and the search keeps the rows of these products (imgsearch/search/shop_filters.py).
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
    found bigint[];
BEGIN
    IF shop IS NULL OR wanted IS NULL OR most IS NULL OR most < 0 THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(m.id) INTO found
      FROM (SELECT p.id
              FROM imgsearch.products p
             WHERE p.tenant = shop AND p.attributes @> wanted
             LIMIT most + 1) AS m;
    RETURN CASE WHEN coalesce(cardinality(found), 0) <= most THEN coalesce(found, '{}') END;
END
$function$;
"""

SIGNATURE = "imgsearch._shop_products(jsonb, integer)"


def upgrade() -> None:
    definitions.run(op.get_bind(), FUNCTION)
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO imgsearch_app")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
