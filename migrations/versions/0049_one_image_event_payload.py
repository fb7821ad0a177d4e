"""An image event's payload has one definition: ``imgsearch._image_event_data``.

Migration 0037's ``imgsearch._webhook_row_event`` built the payload of ``image.deleted``,
``image.ready`` and ``image.failed`` (the image, its shop, its product's id), and migration 0047's
``imgsearch._webhook_images_added`` built ``image.ready``'s again, each with its own lookup of the
product. Both now call one function, so the events a receiver gets for one image can't drift
apart. The events, payloads, ordering keys and order are as before.

The function runs as its caller: inside the triggers' functions (``SECURITY DEFINER``) as the
catalog's owner, and called directly by a console login under its row-level security (another
shop's product reads as null). On a catalog distributed already, it is made a distributed
function, as the triggers' functions are (0037), before the functions calling it change.

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0049
Revises: 0048
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0049"
down_revision: str | None = "0048"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATA = r"""
CREATE OR REPLACE FUNCTION imgsearch._image_event_data(image_id bigint, tenant text, product_pk bigint)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- an image event's payload: the image, its shop, and its product's id
    SELECT jsonb_build_object('image_id', image_id, 'tenant', tenant, 'product_id',
        (SELECT p.product_id FROM imgsearch.products p
         WHERE p.tenant = _image_event_data.tenant AND p.id = _image_event_data.product_pk))
$function$;
"""

IMAGES_ADDED = r"""
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
    FOR r IN SELECT a.id, a.tenant, a.product_pk
             FROM added a
             WHERE a.state = 'ready'
               AND EXISTS (SELECT FROM imgsearch.webhook_endpoints w WHERE w.tenant = a.tenant
                           AND w.disabled_at IS NULL AND 'image.ready' = ANY (w.events))
             ORDER BY a.id LOOP
        PERFORM imgsearch._webhook_event(r.tenant, 'image.ready',
            imgsearch._image_event_data(r.id, r.tenant, r.product_pk), 'image:' || r.id);
    END LOOP;
    RETURN NULL;
END
$function$;
"""

ROW_EVENT = r"""
CREATE OR REPLACE FUNCTION imgsearch._webhook_row_event()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the row's tenant is the one its own statement was allowed to change; the table is the
    -- trigger's argument (on a Citus shard, TG_TABLE_NAME is the shard's name)
    IF TG_ARGV[0] = 'products' THEN
        PERFORM imgsearch._webhook_event(NEW.tenant, 'product.updated',
            jsonb_build_object('product_id', NEW.product_id, 'tenant', NEW.tenant, 'changed',
                (SELECT jsonb_agg(n.key ORDER BY n.key) FROM jsonb_each(to_jsonb(NEW)) n
                 WHERE n.key IN ('category', 'price', 'currency', 'attributes', 'title', 'description', 'brand')
                   AND n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key)),
            'product:' || NEW.id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM imgsearch._webhook_event(OLD.tenant, 'image.deleted',
            imgsearch._image_event_data(OLD.id, OLD.tenant, OLD.product_pk), 'image:' || OLD.id);
    ELSE
        PERFORM imgsearch._webhook_event(NEW.tenant, 'image.' || NEW.state,
            imgsearch._image_event_data(NEW.id, NEW.tenant, NEW.product_pk)
            || CASE WHEN NEW.state = 'failed' THEN jsonb_build_object('reason', NEW.error) ELSE '{}'::jsonb END,
            'image:' || NEW.id);
    END IF;
    RETURN NULL;
END
$function$;
"""

PREVIOUS_IMAGES_ADDED = r"""
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

PREVIOUS_ROW_EVENT = r"""
CREATE OR REPLACE FUNCTION imgsearch._webhook_row_event()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the row's tenant is the one its own statement was allowed to change; the table is the
    -- trigger's argument (on a Citus shard, TG_TABLE_NAME is the shard's name)
    IF TG_ARGV[0] = 'products' THEN
        PERFORM imgsearch._webhook_event(NEW.tenant, 'product.updated',
            jsonb_build_object('product_id', NEW.product_id, 'tenant', NEW.tenant, 'changed',
                (SELECT jsonb_agg(n.key ORDER BY n.key) FROM jsonb_each(to_jsonb(NEW)) n
                 WHERE n.key IN ('category', 'price', 'currency', 'attributes', 'title', 'description', 'brand')
                   AND n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key)),
            'product:' || NEW.id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM imgsearch._webhook_event(OLD.tenant, 'image.deleted',
            jsonb_build_object('image_id', OLD.id, 'tenant', OLD.tenant, 'product_id',
                (SELECT p.product_id FROM imgsearch.products p WHERE p.tenant = OLD.tenant AND p.id = OLD.product_pk)),
            'image:' || OLD.id);
    ELSE
        PERFORM imgsearch._webhook_event(NEW.tenant, 'image.' || NEW.state,
            jsonb_build_object('image_id', NEW.id, 'tenant', NEW.tenant, 'product_id',
                (SELECT p.product_id FROM imgsearch.products p WHERE p.tenant = NEW.tenant AND p.id = NEW.product_pk))
            || CASE WHEN NEW.state = 'failed' THEN jsonb_build_object('reason', NEW.error) ELSE '{}'::jsonb END,
            'image:' || NEW.id);
    END IF;
    RETURN NULL;
END
$function$;
"""

SIGNATURE = "imgsearch._image_event_data(bigint, text, bigint)"


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, DATA)
    if citus.is_distributed(conn):  # the shards' row triggers call it on their own nodes
        op.execute(f"SELECT create_distributed_function('{SIGNATURE}')")
    definitions.run(conn, IMAGES_ADDED)
    definitions.run(conn, ROW_EVENT)


def downgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, PREVIOUS_ROW_EVENT)
    definitions.run(conn, PREVIOUS_IMAGES_ADDED)
    op.execute(f"DROP FUNCTION {SIGNATURE}")
