"""Webhooks from an outbox: a shop's endpoints, its events and their deliveries.

* ``webhook_endpoints``: a tenant's URL, the event types it takes, its signing secret (and the
  previous one for a day after a rotation), and why it was disabled, if it was;
* ``webhook_events``: the outbox. ``imgsearch._webhook_event`` writes an event and a delivery per
  endpoint that takes its type, in the transaction of the change that caused it, and only when a
  live endpoint takes it (a shop without webhooks pays one index probe per change). Row
  triggers write ``image.ready``, ``image.failed`` and ``image.deleted`` (images) and
  ``product.updated`` (products), whatever path made the change; the library writes the others
  (:mod:`imgsearch.hooks.outbox`);
* ``webhook_deliveries``: one per (event, endpoint), claimed by workers with ``FOR UPDATE SKIP
  LOCKED`` (:mod:`imgsearch.hooks.delivery`), never before an earlier pending one of the same
  endpoint and ``ordering_key`` (an image's events go in order).

Row-level security per tenant, as every tenant table; Citus mode distributes the three tables
with the tenant's shards (:mod:`imgsearch.db.citus`). Each definition is held whole
(imgsearch/db/sql/, docs/architecture.md "Where a console function lives").

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0037"
down_revision: str | None = "0036"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"
TABLES = ("webhook_endpoints", "webhook_events", "webhook_deliveries")

CREATE = """
CREATE TABLE imgsearch.webhook_endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT webhook_endpoints_pkey PRIMARY KEY,
    tenant text NOT NULL,
    url text NOT NULL,
    events text[] NOT NULL,
    secret text NOT NULL,
    previous_secret text,
    rotated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    failing_since timestamptz,
    disabled_at timestamptz,
    disabled_reason text
);
CREATE INDEX webhook_endpoints_tenant_idx ON imgsearch.webhook_endpoints (tenant);

CREATE TABLE imgsearch.webhook_events (
    id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT webhook_events_pkey PRIMARY KEY,
    tenant text NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL,
    ordering_key text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_tenant_created_at_idx ON imgsearch.webhook_events (tenant, created_at);
CREATE INDEX webhook_events_created_at_idx ON imgsearch.webhook_events (created_at);

CREATE TABLE imgsearch.webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT webhook_deliveries_pkey PRIMARY KEY,
    tenant text NOT NULL,
    endpoint_id bigint NOT NULL CONSTRAINT webhook_deliveries_endpoint_id_fkey
        REFERENCES imgsearch.webhook_endpoints (id) ON DELETE CASCADE,
    event_id bigint NOT NULL CONSTRAINT webhook_deliveries_event_id_fkey
        REFERENCES imgsearch.webhook_events (id) ON DELETE CASCADE,
    ordering_key text,
    state text NOT NULL DEFAULT 'pending'
        CONSTRAINT webhook_deliveries_state_known_check CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    due_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    last_status integer,
    last_error text
);
CREATE INDEX webhook_deliveries_due_idx ON imgsearch.webhook_deliveries (due_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order_idx
    ON imgsearch.webhook_deliveries (endpoint_id, ordering_key, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event_id_idx ON imgsearch.webhook_deliveries (event_id);
"""

WEBHOOK_EVENT = r"""CREATE OR REPLACE FUNCTION imgsearch._webhook_event(tenant text, type text, data jsonb, ordering_key text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    event bigint;
    endpoint bigint;
BEGIN
    -- an event no live endpoint takes is not kept: a shop without webhooks pays one index probe
    IF NOT EXISTS (SELECT 1 FROM imgsearch.webhook_endpoints w WHERE w.tenant = _webhook_event.tenant
                   AND w.disabled_at IS NULL AND _webhook_event.type = ANY (w.events)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO imgsearch.webhook_events (tenant, type, data, ordering_key)
        VALUES (_webhook_event.tenant, _webhook_event.type, _webhook_event.data, _webhook_event.ordering_key)
        RETURNING id INTO event;
    -- one statement per endpoint, each naming the tenant: on a Citus shard, each stays on the
    -- shop's node (an INSERT ... SELECT would be a query of the cluster)
    FOR endpoint IN SELECT w.id FROM imgsearch.webhook_endpoints w WHERE w.tenant = _webhook_event.tenant
                    AND w.disabled_at IS NULL AND _webhook_event.type = ANY (w.events) LOOP
        INSERT INTO imgsearch.webhook_deliveries (tenant, endpoint_id, event_id, ordering_key)
            VALUES (_webhook_event.tenant, endpoint, event, _webhook_event.ordering_key);
    END LOOP;
    -- the delivering workers wake at once (on a Citus cluster, a shard's NOTIFY can't join the
    -- two-phase commit: they look every second instead)
    IF NOT imgsearch._citus() THEN
        PERFORM pg_notify('imgsearch_webhook', '');
    END IF;
    RETURN event;
END
$function$;
"""

ROW_EVENT = r"""CREATE OR REPLACE FUNCTION imgsearch._webhook_row_event()
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

TRIGGERS = r"""CREATE OR REPLACE TRIGGER images_webhook_state AFTER UPDATE OF state ON imgsearch.images FOR EACH ROW WHEN ((new.state = ANY (ARRAY['ready'::text, 'failed'::text])) AND old.state IS DISTINCT FROM new.state) EXECUTE FUNCTION imgsearch._webhook_row_event('images');

CREATE OR REPLACE TRIGGER images_webhook_inserted AFTER INSERT ON imgsearch.images FOR EACH ROW WHEN (new.state = 'ready'::text) EXECUTE FUNCTION imgsearch._webhook_row_event('images');

CREATE OR REPLACE TRIGGER images_webhook_deleted AFTER DELETE ON imgsearch.images FOR EACH ROW EXECUTE FUNCTION imgsearch._webhook_row_event('images');

CREATE OR REPLACE TRIGGER products_webhook_updated AFTER UPDATE ON imgsearch.products FOR EACH ROW WHEN ((old.category, old.price, old.currency, old.attributes, old.title, old.description, old.brand) IS DISTINCT FROM (new.category, new.price, new.currency, new.attributes, new.title, new.description, new.brand)) EXECUTE FUNCTION imgsearch._webhook_row_event('products');
"""


def upgrade() -> None:
    conn = op.get_bind()
    distributed = citus.is_distributed(conn)
    definitions.run(conn, CREATE)  # several statements: one simple query
    if distributed:  # a catalog distributed already: the tables go with the tenant's shards
        citus.distribute_new_tables(conn, TABLES)
    for table in TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.{table} TO {ROLES}")
        op.execute(f"ALTER TABLE imgsearch.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_app ON imgsearch.{table} TO imgsearch_app "
            "USING (tenant = imgsearch.current_tenant()) WITH CHECK (tenant = imgsearch.current_tenant())"
        )
        op.execute(
            f"CREATE POLICY tenant_console ON imgsearch.{table} TO imgsearch_console "
            "USING (tenant = imgsearch.login_tenant()) WITH CHECK (tenant = imgsearch.login_tenant())"
        )
        op.execute(
            f"CREATE POLICY all_tenants ON imgsearch.{table} TO imgsearch_admin, imgsearch_worker "
            "USING (true) WITH CHECK (true)"
        )
    definitions.run(conn, WEBHOOK_EVENT)
    definitions.run(conn, ROW_EVENT)
    # an event for any tenant, past row-level security: the library's roles, never a console
    # login (whose changes write theirs through the triggers, for the rows it may change)
    op.execute("REVOKE EXECUTE ON FUNCTION imgsearch._webhook_event(text, text, jsonb, text) FROM PUBLIC")
    op.execute(
        "GRANT EXECUTE ON FUNCTION imgsearch._webhook_event(text, text, jsonb, text) "
        "TO imgsearch_app, imgsearch_worker, imgsearch_admin"
    )
    if distributed:  # the shards' triggers call the functions on their own nodes
        for function in ("_webhook_event(text, text, jsonb, text)", "_webhook_row_event()"):
            op.execute(f"SELECT create_distributed_function('imgsearch.{function}')")
    for trigger in TRIGGERS.strip().split("\n\n"):  # one at a time: Citus propagates each alone
        definitions.run(conn, trigger)


def downgrade() -> None:
    if citus.is_distributed(op.get_bind()):
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    for trigger, table in (
        ("images_webhook_state", "images"),
        ("images_webhook_inserted", "images"),
        ("images_webhook_deleted", "images"),
        ("products_webhook_updated", "products"),
    ):
        op.execute(f"DROP TRIGGER {trigger} ON imgsearch.{table}")
    op.execute("DROP FUNCTION imgsearch._webhook_row_event()")
    op.execute("DROP FUNCTION imgsearch._webhook_event(text, text, jsonb, text)")
    op.execute("DROP TABLE imgsearch.webhook_deliveries, imgsearch.webhook_events, imgsearch.webhook_endpoints")
