"""A new image's ``image.ready`` event is written by one statement trigger, not a call per row
(issue 72: what each part of an import costs).

Migration 0037's row trigger ``images_webhook_inserted`` called ``imgsearch._webhook_row_event``
for every image inserted ready, which built the event's payload (its product looked up) before
``imgsearch._webhook_event`` found that the shop has no endpoint taking it: 0.9 s of a 100,000-row
import's 2.8 s images insert for a shop without webhooks (bench/ingest/import_costs.py). Now a
statement trigger reads the images added once, keeps those of shops with a live endpoint for
``image.ready`` (one probe a statement), and writes their events one by one in id order, as
before: the same events, payloads, ordering keys and order.

Citus mode keeps the row trigger (a shard's query can't read a transition table):
:func:`imgsearch.db.citus.distribute` puts it back, and on a catalog distributed already this
migration leaves it.

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0047
Revises: 0046
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0047"
down_revision: str | None = "0046"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION imgsearch._webhook_images_added()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    r record;
BEGIN
    -- the images added ready, of shops with a live endpoint for image.ready (a shop without one
    -- pays this statement's probe, not a call per image), in the order they were made
    FOR r IN SELECT a.id, a.tenant,
                    (SELECT p.product_id FROM imgsearch.products p WHERE p.tenant = a.tenant AND p.id = a.product_pk) AS product_id
             FROM added a
             WHERE a.state = 'ready'
               AND EXISTS (SELECT FROM imgsearch.webhook_endpoints w WHERE w.tenant = a.tenant
                           AND w.disabled_at IS NULL AND 'image.ready' = ANY (w.events))
             ORDER BY a.id LOOP
        PERFORM imgsearch._webhook_event(r.tenant, 'image.ready',
            jsonb_build_object('image_id', r.id, 'tenant', r.tenant, 'product_id', r.product_id),
            'image:' || r.id);
    END LOOP;
    RETURN NULL;
END
$function$;
"""

# migration 0037's, which Citus mode keeps (imgsearch.db.citus.IMAGE_WEBHOOK_ROW_TRIGGER)
ROW_TRIGGER = (
    "CREATE TRIGGER images_webhook_inserted AFTER INSERT ON imgsearch.images FOR EACH ROW "
    "WHEN (new.state = 'ready') EXECUTE FUNCTION imgsearch._webhook_row_event('images')"
)
STATEMENT_TRIGGER = (
    "CREATE TRIGGER images_webhook_inserted AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._webhook_images_added()"
)


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, FUNCTION)
    if citus.is_distributed(conn):  # a cluster keeps the row trigger
        return
    op.execute("DROP TRIGGER images_webhook_inserted ON imgsearch.images")
    op.execute(STATEMENT_TRIGGER)


def downgrade() -> None:
    conn = op.get_bind()
    if not citus.is_distributed(conn):
        op.execute("DROP TRIGGER images_webhook_inserted ON imgsearch.images")
        op.execute(ROW_TRIGGER)
    op.execute("DROP FUNCTION imgsearch._webhook_images_added()")
