"""Events find their searches by the searches' keys (issue 72: a search that records itself, and
its events, for free).

``imgsearch._checked_events`` joined a batch's events with the query log. PostgreSQL assumes a
JSON array holds 100 elements, so the join was planned by hashing the log: every search of the
day read for each batch, 147 ms for one event once a day holds 100,000 searches, 500 ms at
300,000 (bench/search/record_writes.py --events), so that 1,000 events a second would have kept
several cores busy. The searches the events name are now read first, by their keys
(``query_id = ANY(...)`` with ``searched_at = ANY(...)``, each day's partition through its
index), and the events joined with those: 2-3 ms for 1 to 20 events at any of those sizes.
Results and errors are unchanged. The definition is held whole (imgsearch/db/sql/).

Revision ID: 0053
Revises: 0052
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0053"
down_revision: str | None = "0052"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKED = r"""
CREATE OR REPLACE FUNCTION imgsearch._checked_events(events jsonb)
 RETURNS SETOF imgsearch.checked_event
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
BEGIN
    RETURN QUERY
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
    ), parsed AS MATERIALIZED (
        SELECT s.index, s.problem, s.late,
            CASE WHEN s.problem IS NULL THEN (s.e->>'query_id')::uuid END AS query_id,
            CASE WHEN s.problem IS NULL THEN (s.e->>'position')::int END AS position,
            CASE WHEN s.problem IS NULL AND s.late IS NULL
                 THEN coalesce(imgsearch._event_time(s.e->>'time'), now()) END AS occurred_at,
            s.e->>'action' AS action_name, s.e->>'object_id' AS object_id,
            s.e->>'event_id' AS event_id, s.e->>'client_id' AS client_id
        FROM shaped s
    ), named AS MATERIALIZED (
        -- the searches the events name, read by their keys through each day's partition's index:
        -- a join of the events with the log was planned for the 100 events PostgreSQL assumes a
        -- JSON array holds, and read the whole log to hash it
        SELECT q.query_id, q.tenant, q.query_norm, q.searched_at, q.result_offset, q.product_ids,
               q.image_ids, q.product_pks
        FROM imgsearch.search_queries q
        WHERE q.query_id = ANY(ARRAY(SELECT p.query_id FROM parsed p WHERE p.query_id IS NOT NULL))
          AND q.searched_at = ANY(ARRAY(SELECT uuid_extract_timestamp(p.query_id) FROM parsed p
                                        WHERE p.query_id IS NOT NULL))
          AND (shop IS NULL OR q.tenant = shop)
    ), matched AS (
        SELECT p.*, q.query_id AS found, q.tenant, q.query_norm, q.searched_at, q.result_offset,
               q.product_ids, q.image_ids, q.product_pks, p.position - q.result_offset AS slot
        FROM parsed p
        LEFT JOIN named q ON q.query_id = p.query_id AND q.searched_at = uuid_extract_timestamp(p.query_id)
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
END
$function$;
"""
PREVIOUS_CHECKED = r"""
CREATE OR REPLACE FUNCTION imgsearch._checked_events(events jsonb)
 RETURNS SETOF imgsearch.checked_event
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
BEGIN
    RETURN QUERY
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
         AND (shop IS NULL OR q.tenant = shop)
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
END
$function$;
"""


def upgrade() -> None:
    definitions.run(op.get_bind(), CHECKED)


def downgrade() -> None:
    definitions.run(op.get_bind(), PREVIOUS_CHECKED)
