"""An embedding row written while its product's category or price changes ends with the new
values (issue 72: found by the soak test, one run in three).

The copies of a product's filter columns on its embeddings rows (migration 0004) are kept by two
row triggers: a new row reads its product (``embedding_takes_product_filters``), and a product's
change updates its rows (``product_filters_to_embeddings``). Neither sees the other's uncommitted
work: a row inserted while the change is in flight reads the old values, and the change's
update misses a row not yet committed. Both commit, and the row keeps the old values.

The two already meet, one waiting for the other, at the product's ``facet_members`` keys
(migration 0039): a statement adding a product's rows, and one changing its values, upserts
them and holds them until commit. So each now reads again after that wait, in a statement
trigger that fires after the facets' one (triggers of one event fire in name order; each
statement of a function reads anew under READ COMMITTED):

* ``embeddings_filters_rechecked`` (after insert): the rows added whose product now has other
  values take them (a change committed while the insert waited);
* ``products_filters_rechecked`` (after update): the changed products' rows that still hold other
  values take the new ones (rows committed while the change waited).

Whichever of the two commits second reads the other's work. Neither takes a lock the writers
didn't take before, so no new wait can close a circle. Citus mode drops both, with the facets'
triggers (a shard's query can't read a transition table): a cluster keeps the race
(docs/operations.md).

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0046
Revises: 0045
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0046"
down_revision: str | None = "0045"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION imgsearch._filters_recheck_rows()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the rows just added, after the facets' trigger waited at their products' member keys for
    -- any change of them in flight: one whose product now has other values takes them (the
    -- check alone reads the rows added and their products; the update is the rare case)
    IF EXISTS (SELECT FROM added a JOIN imgsearch.products p ON p.id = a.product_pk
               WHERE (a.category, a.price) IS DISTINCT FROM (p.category, p.price)) THEN
        UPDATE imgsearch.embeddings e SET category = p.category, price = p.price
        FROM added a JOIN imgsearch.products p ON p.id = a.product_pk
        WHERE e.image_id = a.image_id AND e.product_pk = a.product_pk AND e.model_id = a.model_id
          AND e.region = a.region
          AND (a.category, a.price) IS DISTINCT FROM (p.category, p.price);
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch._filters_recheck_products()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the changed products' rows, after the facets' trigger waited at their member keys for any
    -- statement adding rows of them: a row committed meanwhile, which the row trigger's update
    -- could not see, takes the new values
    UPDATE imgsearch.embeddings e SET category = n.category, price = n.price
    FROM new_products n JOIN old_products o ON o.id = n.id
    WHERE e.product_pk = n.id
      AND (n.category, n.price) IS DISTINCT FROM (o.category, o.price)
      AND (e.category, e.price) IS DISTINCT FROM (n.category, n.price);
    RETURN NULL;
END
$function$;
"""

TRIGGERS = r"""
CREATE OR REPLACE TRIGGER embeddings_filters_rechecked AFTER INSERT ON imgsearch.embeddings REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._filters_recheck_rows();

CREATE OR REPLACE TRIGGER products_filters_rechecked AFTER UPDATE ON imgsearch.products REFERENCING OLD TABLE AS old_products NEW TABLE AS new_products FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._filters_recheck_products();
"""


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, FUNCTIONS)
    if citus.is_distributed(conn):  # a cluster keeps no statement trigger reading transition tables
        return
    definitions.run(conn, TRIGGERS)


def downgrade() -> None:
    if citus.is_distributed(op.get_bind()):  # none is there, but Citus refuses even to look
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    for trigger, table in citus.FILTER_RECHECKS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON imgsearch.{table}")
    op.execute("DROP FUNCTION imgsearch._filters_recheck_products()")
    op.execute("DROP FUNCTION imgsearch._filters_recheck_rows()")
