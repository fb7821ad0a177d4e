"""Shoppers' feedback: the searches and what shoppers did with their hits, and the boosts learned
from them.

Tables, in OpenSearch User Behavior Insights' terms (the views ``imgsearch.ubi_queries`` and
``imgsearch.ubi_events`` give UBI's documents, for tools that read them):

* ``search_queries``: one row per search: its ``query_id`` (a UUIDv7: its first 48 bits are the
  search's time, which is ``searched_at``), tenant, client, the query as typed and normalised, the
  filters and mode, the page's offset and its hits in order (product ids, image ids and the
  products' keys);
* ``search_events``: impressions, clicks, add-to-carts and purchases, each naming its search, the
  object acted on (a product id or an image id: the hit at ``position``) and when;
* ``event_ids``: the ``event_id`` of each event that had one, so a repeated one counts once;
* ``boosts``: per product, for a normalised query (``query_norm``) or for every query (``''``),
  how much searches lift it (``boost``, 0 to 1), with the evidence behind it.

``search_queries`` and ``search_events`` are partitioned by day (range partitions in schema
``imgsearch_log``, with a default partition for days not prepared);
``imgsearch.maintain_feedback_log(retention_days)`` prepares the coming days and drops what is
older than the retention (the boosts job calls it). ``imgsearch.record_events(events jsonb)``
checks a batch of events, all of them, and records them all or none: a refused batch raises
``invalid_parameter_value`` with each bad event's index and problem as JSON in its DETAIL.

Every table has the tenant policies of migration 0003: a tenant's login or scope sees and records
only its own searches' feedback.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("imgsearch_app", "imgsearch_console", "imgsearch_worker", "imgsearch_admin")
TABLES = ("search_queries", "search_events", "event_ids", "boosts")
ACTIONS = ("impression", "click", "add_to_cart", "purchase")
MAX_EVENTS = 10_000  # per batch (imgsearch.learning.events.MAX_EVENTS)

CREATE = """
CREATE SCHEMA imgsearch_log;

CREATE TABLE imgsearch.search_queries (
    query_id uuid NOT NULL,
    searched_at timestamptz NOT NULL,
    application text NOT NULL DEFAULT 'imgsearch',
    tenant text,
    client_id text,
    user_query text,
    query_norm text,
    query_attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    result_offset integer NOT NULL DEFAULT 0,
    product_ids text[] NOT NULL,
    image_ids bigint[] NOT NULL,
    product_pks bigint[] NOT NULL,
    CONSTRAINT search_queries_pkey PRIMARY KEY (query_id, searched_at)
) PARTITION BY RANGE (searched_at);
CREATE INDEX search_queries_tenant_searched_at_idx ON imgsearch.search_queries (tenant, searched_at);

CREATE TABLE imgsearch.search_events (
    query_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    tenant text,
    action_name text NOT NULL,
    object_id text NOT NULL,
    object_id_field text NOT NULL,
    position integer NOT NULL,
    product_pk bigint NOT NULL,
    query_norm text,
    event_id text,
    client_id text,
    CONSTRAINT search_events_action_check
        CHECK (action_name IN ('impression', 'click', 'add_to_cart', 'purchase')),
    CONSTRAINT search_events_object_field_check CHECK (object_id_field IN ('product_id', 'image_id')),
    CONSTRAINT search_events_position_check CHECK (position >= 1)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX search_events_tenant_occurred_at_idx ON imgsearch.search_events (tenant, occurred_at);
CREATE INDEX search_events_query_id_idx ON imgsearch.search_events (query_id);

CREATE TABLE imgsearch.event_ids (
    tenant text NOT NULL,
    event_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    CONSTRAINT event_ids_pkey PRIMARY KEY (tenant, event_id)
);
CREATE INDEX event_ids_occurred_at_idx ON imgsearch.event_ids (occurred_at);

CREATE TABLE imgsearch.boosts (
    product_pk bigint NOT NULL
        CONSTRAINT boosts_product_pk_fkey REFERENCES imgsearch.products (id) ON DELETE CASCADE,
    query_norm text NOT NULL,
    tenant text NOT NULL,
    product_id text NOT NULL,
    boost real NOT NULL,
    clicks integer NOT NULL,
    conversions integer NOT NULL,
    expected double precision NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT boosts_pkey PRIMARY KEY (product_pk, query_norm),
    CONSTRAINT boosts_boost_check CHECK (boost > 0 AND boost <= 1)
);
CREATE UNIQUE INDEX boosts_tenant_query_norm_product_id_idx ON imgsearch.boosts (tenant, query_norm, product_id);
"""

# the daily partitions of the two logs: the coming days prepared, the days past the retention
# dropped (a day whose rows went to the default partition, when nothing prepared it, stays there
# until the retention deletes them)
MAINTAIN = """
CREATE FUNCTION imgsearch.maintain_feedback_log(retention_days integer, days_ahead integer DEFAULT 7)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    logs CONSTANT text[] := ARRAY['search_queries', 'search_events'];
    columns CONSTANT text[] := ARRAY['searched_at', 'occurred_at'];
    cutoff timestamptz;
    day date;
    created int := 0;
    dropped int := 0;
    deleted bigint := 0;
    n bigint;
    busy boolean;
    part record;
BEGIN
    IF retention_days IS NULL OR retention_days < 1 THEN
        RAISE EXCEPTION 'retention_days must be at least 1, got %', coalesce(retention_days::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF days_ahead IS NULL OR days_ahead < 0 OR days_ahead > 366 THEN
        RAISE EXCEPTION 'days_ahead must be from 0 to 366, got %', coalesce(days_ahead::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(days => retention_days);
    FOR i IN 1 .. 2 LOOP
        IF to_regclass(format('imgsearch_log.%I', logs[i] || '_default')) IS NULL THEN
            EXECUTE format('CREATE TABLE imgsearch_log.%I PARTITION OF imgsearch.%I DEFAULT',
                           logs[i] || '_default', logs[i]);
        END IF;
        FOR day IN SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                                       (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                                       interval '1 day') AS d LOOP
            CONTINUE WHEN to_regclass(format('imgsearch_log.%I', logs[i] || '_' || to_char(day, 'YYYYMMDD')))
                IS NOT NULL;
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM imgsearch_log.%I WHERE %I >= %L AND %I < %L)',
                           logs[i] || '_default', columns[i], day::timestamp AT TIME ZONE 'UTC',
                           columns[i], (day + 1)::timestamp AT TIME ZONE 'UTC') INTO busy;
            CONTINUE WHEN busy;
            EXECUTE format('CREATE TABLE imgsearch_log.%I PARTITION OF imgsearch.%I FOR VALUES FROM (%L) TO (%L)',
                           logs[i] || '_' || to_char(day, 'YYYYMMDD'), logs[i],
                           day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END LOOP;
        FOR part IN
            SELECT c.relname FROM pg_inherits h
            JOIN pg_class c ON c.oid = h.inhrelid
            JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE h.inhparent = format('imgsearch.%I', logs[i])::regclass AND s.nspname = 'imgsearch_log'
              AND c.relname ~ ('^' || logs[i] || '_[0-9]{8}$')
              AND to_date(right(c.relname, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC' + interval '1 day' <= cutoff
        LOOP
            EXECUTE format('DROP TABLE imgsearch_log.%I', part.relname);
            dropped := dropped + 1;
        END LOOP;
        EXECUTE format('DELETE FROM imgsearch_log.%I WHERE %I < %L', logs[i] || '_default', columns[i], cutoff);
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
    END LOOP;
    DELETE FROM imgsearch.event_ids WHERE occurred_at < cutoff;
    RETURN jsonb_build_object('created', created, 'dropped', dropped, 'deleted', deleted);
END
$fn$;
"""

# an ISO 8601 time with its UTC offset, else NULL (a bad one is an event's problem, not an error)
TIMESTAMP = r"""
CREATE FUNCTION imgsearch._event_time(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    IF value !~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)$' THEN
        RETURN NULL;
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$fn$;
"""

# each event of a batch with its problem (NULL: fine) and what recording it writes
CHECKED = r"""
CREATE TYPE imgsearch.checked_event AS (
    index integer, problem text, query_id uuid, occurred_at timestamptz, tenant text, action_name text,
    object_id text, object_id_field text, "position" integer, product_pk bigint, query_norm text,
    event_id text, client_id text
);

CREATE FUNCTION imgsearch._checked_events(events jsonb) RETURNS SETOF imgsearch.checked_event
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH given AS (
        SELECT (t.ord - 1)::int AS index, t.e,
               (SELECT string_agg(format('%s', to_jsonb(k)), ', ' ORDER BY k) FROM jsonb_object_keys(
                    CASE WHEN jsonb_typeof(t.e) = 'object' THEN t.e ELSE '{}'::jsonb END) AS k
                WHERE k NOT IN ('query_id', 'action', 'object_id', 'position', 'time', 'event_id',
                                'client_id')) AS unknown
        FROM jsonb_array_elements(events) WITH ORDINALITY AS t(e, ord)
    ), shaped AS (
        SELECT g.index, g.e,
            CASE
                WHEN jsonb_typeof(g.e) <> 'object' THEN 'an event must be a JSON object'
                WHEN g.unknown IS NOT NULL THEN format('unknown field %s; an event has query_id, action, '
                    'object_id, position, time, event_id and client_id', g.unknown)
                WHEN jsonb_typeof(g.e->'query_id') IS DISTINCT FROM 'string' THEN
                    'query_id must be the query_id of a search (a string)'
                WHEN NOT (g.e->>'query_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
                    THEN format('no search has query_id %s', g.e->'query_id')
                WHEN jsonb_typeof(g.e->'action') IS DISTINCT FROM 'string'
                     OR g.e->>'action' NOT IN ('impression', 'click', 'add_to_cart', 'purchase') THEN
                    format('action must be one of impression, click, add_to_cart, purchase; got %s',
                           coalesce((g.e->'action')::text, 'nothing'))
                WHEN jsonb_typeof(g.e->'object_id') IS DISTINCT FROM 'string'
                     AND jsonb_typeof(g.e->'object_id') IS DISTINCT FROM 'number' THEN
                    'object_id must be the product id or the image id of a hit'
                WHEN jsonb_typeof(g.e->'position') IS DISTINCT FROM 'number' OR g.e->>'position' !~ '^[0-9]{1,9}$'
                     OR (g.e->>'position')::int < 1 THEN
                    format('position must be a whole number from 1 (the first hit), got %s',
                           coalesce((g.e->'position')::text, 'nothing'))
            END AS problem,
            CASE  -- told once the search is known
                WHEN g.e->'time' IS NOT NULL AND jsonb_typeof(g.e->'time') <> 'null'
                     AND (jsonb_typeof(g.e->'time') <> 'string' OR imgsearch._event_time(g.e->>'time') IS NULL)
                    THEN format('time must be an ISO 8601 date and time with its UTC offset, got %s', g.e->'time')
                WHEN g.e->'event_id' IS NOT NULL AND jsonb_typeof(g.e->'event_id') <> 'null'
                     AND (jsonb_typeof(g.e->'event_id') <> 'string' OR length(g.e->>'event_id') NOT BETWEEN 1 AND 200)
                    THEN 'event_id must be a string of 1 to 200 characters'
                WHEN g.e->'client_id' IS NOT NULL AND jsonb_typeof(g.e->'client_id') <> 'null'
                     AND (jsonb_typeof(g.e->'client_id') <> 'string' OR length(g.e->>'client_id') NOT BETWEEN 1 AND 200)
                    THEN 'client_id must be a string of 1 to 200 characters'
            END AS late
        FROM given g
    ), parsed AS (
        SELECT s.index, s.problem, s.late,
            CASE WHEN s.problem IS NULL THEN (s.e->>'query_id')::uuid END AS query_id,
            CASE WHEN s.problem IS NULL THEN (s.e->>'position')::int END AS position,
            CASE WHEN s.problem IS NULL AND s.late IS NULL
                 THEN coalesce(imgsearch._event_time(s.e->>'time'), now()) END AS occurred_at,
            s.e->>'action' AS action_name, s.e->>'object_id' AS object_id,
            s.e->>'event_id' AS event_id, s.e->>'client_id' AS client_id
        FROM shaped s
    ), matched AS (
        SELECT p.*, q.query_id AS found, q.tenant, q.query_norm, q.searched_at, q.result_offset,
               q.product_ids, q.image_ids, q.product_pks, p.position - q.result_offset AS slot
        FROM parsed p
        LEFT JOIN imgsearch.search_queries q
          ON q.query_id = p.query_id AND q.searched_at = uuid_extract_timestamp(p.query_id)
    )
    SELECT m.index,
        CASE
            WHEN m.problem IS NOT NULL THEN m.problem
            WHEN m.found IS NULL THEN format('no search has query_id %s (of this tenant, within the retention)',
                                             m.query_id)
            WHEN m.late IS NOT NULL THEN m.late
            WHEN cardinality(m.product_ids) = 0 THEN format('position %s: search %s had no hits', m.position,
                                                            m.query_id)
            WHEN m.slot < 1 OR m.slot > cardinality(m.product_ids) THEN
                format('position %s is outside search %s''s hits (positions %s to %s)', m.position, m.query_id,
                       m.result_offset + 1, m.result_offset + cardinality(m.product_ids))
            WHEN m.product_pks[m.slot] IS NULL THEN
                format('position %s: product %s is no longer in the catalog', m.position, m.product_ids[m.slot])
            WHEN m.object_id IS DISTINCT FROM m.product_ids[m.slot]
                 AND m.object_id IS DISTINCT FROM m.image_ids[m.slot]::text THEN
                format('object_id %s is not the hit at position %s (product %s, image %s)', m.object_id,
                       m.position, m.product_ids[m.slot], m.image_ids[m.slot])
            WHEN m.occurred_at > now() + interval '5 minutes' THEN
                format('time %s is in the future', m.occurred_at)
            WHEN m.occurred_at < m.searched_at - interval '5 minutes' THEN
                format('time %s is before its search (%s)', m.occurred_at, m.searched_at)
        END,
        m.query_id, m.occurred_at, m.tenant, m.action_name, m.object_id,
        CASE WHEN m.object_id = m.product_ids[m.slot] THEN 'product_id' ELSE 'image_id' END,
        m.position, m.product_pks[m.slot], m.query_norm, m.event_id, m.client_id
    FROM matched m
    ORDER BY m.index;
END;
"""

RECORD = f"""
CREATE FUNCTION imgsearch.record_events(events jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    checked imgsearch.checked_event[];
    problems jsonb;
    recorded bigint;
    n integer;
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of events' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := jsonb_array_length(events);
    IF n = 0 OR n > {MAX_EVENTS} THEN
        RAISE EXCEPTION 'a batch has 1 to {MAX_EVENTS} events, got %', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    checked := ARRAY(SELECT c FROM imgsearch._checked_events(events) AS c);
    SELECT jsonb_agg(jsonb_build_object('index', c.index, 'error', c.problem) ORDER BY c.index)
      INTO problems FROM unnest(checked) AS c WHERE c.problem IS NOT NULL;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION '% of % events refused, nothing recorded: %', jsonb_array_length(problems), n,
            (SELECT string_agg(format('event %s: %s', p->>'index', p->>'error'), '; ')
             FROM (SELECT p FROM jsonb_array_elements(problems) AS p LIMIT 5) AS first)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = problems::text;
    END IF;
    WITH firsts AS (  -- an event_id once per batch: its first event
        SELECT DISTINCT ON (coalesce(c.tenant, ''), c.event_id) c.* FROM unnest(checked) AS c
        WHERE c.event_id IS NOT NULL ORDER BY coalesce(c.tenant, ''), c.event_id, c.index
    ), fresh AS (
        INSERT INTO imgsearch.event_ids (tenant, event_id, occurred_at)
        SELECT coalesce(f.tenant, ''), f.event_id, f.occurred_at FROM firsts f
        ON CONFLICT DO NOTHING
        RETURNING tenant, event_id
    ), kept AS (
        SELECT c.* FROM unnest(checked) AS c WHERE c.event_id IS NULL
        UNION ALL
        SELECT f.* FROM firsts f JOIN fresh ON fresh.tenant = coalesce(f.tenant, '') AND fresh.event_id = f.event_id
    ), written AS (
        INSERT INTO imgsearch.search_events (query_id, occurred_at, tenant, action_name, object_id, object_id_field,
                                             position, product_pk, query_norm, event_id, client_id)
        SELECT k.query_id, k.occurred_at, k.tenant, k.action_name, k.object_id, k.object_id_field, k.position,
               k.product_pk, k.query_norm, k.event_id, k.client_id
        FROM kept k
        RETURNING 1
    )
    SELECT count(*) INTO recorded FROM written;
    RETURN jsonb_build_object('recorded', recorded, 'duplicates', n - recorded);
END
$fn$;
"""

# User Behavior Insights' documents (ubi_queries, ubi_events) over the logs
UBI = """
CREATE VIEW imgsearch.ubi_queries WITH (security_invoker = true) AS
SELECT q.query_id::text AS query_id, q.tenant, jsonb_strip_nulls(jsonb_build_object(
    'application', q.application,
    'query_id', q.query_id::text,
    'client_id', q.client_id,
    'user_query', q.user_query,
    'query_attributes', q.query_attributes || jsonb_build_object('tenant', q.tenant, 'offset', q.result_offset),
    'object_id_field', 'product_id',
    'query_response_id', q.query_id::text,
    'query_response_hit_ids', to_jsonb(q.product_ids),
    'timestamp', to_char(q.searched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
)) AS document
FROM imgsearch.search_queries q;

CREATE VIEW imgsearch.ubi_events WITH (security_invoker = true) AS
SELECT e.query_id::text AS query_id, e.tenant, jsonb_strip_nulls(jsonb_build_object(
    'application', 'imgsearch',
    'action_name', e.action_name,
    'query_id', e.query_id::text,
    'client_id', e.client_id,
    'timestamp', to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'message_type', 'INFO',
    'event_attributes', jsonb_build_object(
        'object', jsonb_build_object('object_id', e.object_id, 'object_id_field', e.object_id_field),
        'position', jsonb_build_object('ordinal', e.position),
        'event_id', e.event_id,
        'tenant', e.tenant
    )
)) AS document
FROM imgsearch.search_events e;
"""


def upgrade() -> None:
    op.execute(CREATE)
    op.execute(MAINTAIN)
    op.execute(TIMESTAMP)
    op.execute(CHECKED)
    op.execute(RECORD)
    op.execute(UBI)
    op.execute("SELECT imgsearch.maintain_feedback_log(90)")
    everyone = ", ".join(ROLES)
    op.execute(f"GRANT USAGE ON SCHEMA imgsearch_log TO {everyone}")
    for table in TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.{table} TO {everyone}")
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
            f"CREATE POLICY all_tenants ON imgsearch.{table} TO imgsearch_worker, imgsearch_admin "
            "USING (true) WITH CHECK (true)"
        )
    op.execute(f"GRANT SELECT ON imgsearch.ubi_queries, imgsearch.ubi_events TO {everyone}")
    op.execute(f"GRANT EXECUTE ON FUNCTION imgsearch.record_events(jsonb) TO {everyone}")
    op.execute("REVOKE ALL ON FUNCTION imgsearch.maintain_feedback_log(integer, integer) FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP VIEW imgsearch.ubi_events, imgsearch.ubi_queries")
    op.execute("DROP FUNCTION imgsearch.record_events(jsonb)")
    op.execute("DROP FUNCTION imgsearch._checked_events(jsonb)")
    op.execute("DROP TYPE imgsearch.checked_event")
    op.execute("DROP FUNCTION imgsearch._event_time(text)")
    op.execute("DROP FUNCTION imgsearch.maintain_feedback_log(integer, integer)")
    op.execute("DROP TABLE imgsearch.boosts, imgsearch.event_ids, imgsearch.search_events, imgsearch.search_queries")
    op.execute("DROP SCHEMA imgsearch_log")
