"""The boosts job's cost on a shop's log: ``refresh`` (imgsearch.learning.boosts) against its
statement before 2026-11-29, in one run. That one weighed each impression by the examination
curve, ``1 / log(2, position + 1)`` in ``numeric``, one impression at a time; the job now counts
impressions per position first and weighs the positions, and sums expected clicks over the
impressions of products with a pair engaged enough to be scored only.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/learning_refresh.py --searches 100000

On bench/search/search.py's 100k-row catalog (its shop ``acme``; loaded first if missing), in a
day of the log written for the run: ``--searches`` searches of 10 hits each (products drawn at
random, one of 200 queries), a click on ``--clicked`` of them (position 1 to 10, the higher the
likelier) and a purchase on a tenth of those. Then ``refresh(engine, Policy(), tenant="acme")``,
each way, in turns, 3 rounds, and the boosts written compared (the same, to the bit). The run's searches, events and
boosts are deleted after it.

The figure it produces: docs/benchmarks.md, "Learning from shoppers" (the job's cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).parent))
from _catalog import stored_catalog

from imgsearch.learning import boosts

BEFORE = """
WITH shown AS (  -- every hit of every search in the window: an impression at its position
    SELECT p.tenant, q.query_norm, h.pk AS product_pk, (q.result_offset + h.n)::int AS position
    FROM imgsearch.search_queries q
    CROSS JOIN LATERAL unnest(q.product_pks) WITH ORDINALITY AS h(pk, n)
    JOIN imgsearch.products p ON p.tenant = q.tenant AND p.id = h.pk
    WHERE q.searched_at >= :since AND (CAST(:tenant AS text) IS NULL OR q.tenant = CAST(:tenant AS text))
), acted AS (  -- what a search's shopper did with one hit, each kind once
    SELECT p.tenant, e.query_norm, e.product_pk, min(e.position) AS position,
           bool_or(e.action_name = 'click')::int AS clicked,
           bool_or(e.action_name IN ('add_to_cart', 'purchase'))::int AS converted
    FROM imgsearch.search_events e
    JOIN imgsearch.products p ON p.tenant = e.tenant AND p.id = e.product_pk
    WHERE e.occurred_at >= :since AND e.action_name <> 'impression'
      AND (CAST(:tenant AS text) IS NULL OR e.tenant = CAST(:tenant AS text))
    GROUP BY p.tenant, e.query_id, e.query_norm, e.product_pk
), shop AS (  -- the tenant's clicks per impression, and the examination curve's mean over its impressions
    SELECT s.tenant,
           coalesce((SELECT sum(a.clicked) FROM acted a WHERE a.tenant = s.tenant), 0)::float8 / count(*) AS rate,
           avg(1 / log(2, s.position + 1)) AS examined
    FROM shown s GROUP BY s.tenant
), at_position AS (  -- the position bias: clicks per impression at each position, from the prior
    SELECT s.tenant, s.position,
           (coalesce((SELECT sum(a.clicked) FROM acted a WHERE a.tenant = s.tenant AND a.position = s.position), 0)
            + :position_prior * h.rate * (1 / log(2, s.position + 1)) / h.examined)::float8
           / (count(*) + :position_prior) AS rate
    FROM shown s JOIN shop h ON h.tenant = s.tenant GROUP BY s.tenant, s.position, h.rate, h.examined
), per_click AS (
    SELECT a.tenant, coalesce(sum(a.converted)::float8 / nullif(sum(a.clicked), 0), 0) AS conversions
    FROM acted a GROUP BY a.tenant
), expected AS (
    SELECT s.tenant, CASE WHEN grouping(s.query_norm) = 1 THEN '' ELSE s.query_norm END AS query_norm,
           s.product_pk, sum(r.rate) AS clicks
    FROM shown s JOIN at_position r ON r.tenant = s.tenant AND r.position = s.position
    GROUP BY GROUPING SETS ((s.tenant, s.query_norm, s.product_pk), (s.tenant, s.product_pk))
), engaged AS (
    SELECT a.tenant, CASE WHEN grouping(a.query_norm) = 1 THEN '' ELSE a.query_norm END AS query_norm,
           a.product_pk, sum(a.clicked)::int AS clicks, sum(a.converted)::int AS conversions
    FROM acted a
    GROUP BY GROUPING SETS ((a.tenant, a.query_norm, a.product_pk), (a.tenant, a.product_pk))
), scored AS (
    SELECT g.tenant, g.query_norm, g.product_pk, g.clicks, g.conversions,
           x.clicks * (1 + :conversion_weight * coalesce(c.conversions, 0)) AS expected,
           (g.clicks + :conversion_weight * g.conversions + :prior)
           / (x.clicks * (1 + :conversion_weight * coalesce(c.conversions, 0)) + :prior) AS ratio
    FROM engaged g
    JOIN expected x ON x.tenant = g.tenant AND x.query_norm = g.query_norm AND x.product_pk = g.product_pk
    LEFT JOIN per_click c ON c.tenant = g.tenant
    WHERE g.query_norm IS NOT NULL AND (g.clicks >= :min_clicks OR g.conversions >= :min_conversions)
)

INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, conversions, expected)
SELECT s.product_pk, s.query_norm, s.tenant, p.product_id, least(1.0, ln(s.ratio) / ln(:full_ratio)),
       s.clicks, s.conversions, s.expected
FROM scored s JOIN imgsearch.products p ON p.tenant = s.tenant AND p.id = s.product_pk
WHERE s.ratio > 1 AND least(1.0, ln(s.ratio) / ln(:full_ratio)) >= 0.001
RETURNING query_norm = '' AS per_product, tenant
"""
MARK = "learning_refresh"
SEARCHES = """
INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, query_norm, query_attributes, result_offset,
    product_ids, image_ids, product_pks)
SELECT u, uuid_extract_timestamp(u), 'acme', 'query ' || (g % 200), '{"bench": "learning_refresh"}', 0,
       ARRAY(SELECT p.product_id FROM imgsearch.products p WHERE p.id = ANY(h.pks) ORDER BY array_position(h.pks, p.id)),
       h.pks, h.pks
FROM (SELECT g, uuidv7(-(g * (now() - date_trunc('day', now())) / (:n + 1))) AS u FROM generate_series(1, :n) AS g) s
CROSS JOIN LATERAL (
    SELECT ARRAY(SELECT 1 + ((g * 7919 + i * 104729 + (g % 200) * 31) % :products) FROM generate_series(1, 10) AS i) AS pks
) h
"""
EVENTS = """
INSERT INTO imgsearch.search_events (query_id, occurred_at, tenant, action_name, object_id, object_id_field, position,
    product_pk, query_norm)
SELECT q.query_id, q.searched_at + interval '5 seconds', q.tenant, a.action, q.product_ids[c.position], 'product_id',
       c.position, q.product_pks[c.position], q.query_norm
FROM imgsearch.search_queries q
CROSS JOIN LATERAL (SELECT 1 + floor(10 * random() ^ 3)::int AS position) c
CROSS JOIN LATERAL (SELECT 'click' AS action UNION ALL SELECT 'purchase' WHERE random() < 0.1) a
WHERE q.query_attributes->>'bench' = 'learning_refresh' AND random() < :clicked
"""


def written(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(
            text("SELECT query_norm, product_pk, boost, clicks, conversions, expected FROM imgsearch.boosts "
                 "WHERE tenant = 'acme' ORDER BY 1, 2")
        ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", type=int, default=100_000)
    parser.add_argument("--clicked", type=float, default=0.2, help="the share of searches with a click")
    args = parser.parse_args()
    url, _, _, _ = stored_catalog(100_000, "calibrated")
    engine = create_engine(url, pool_size=1)
    computes = {"before": BEFORE, "now": boosts._COMPUTE}
    try:
        with engine.begin() as conn:
            products = conn.execute(text("SELECT max(id) FROM imgsearch.products")).scalar_one()
            conn.execute(text(SEARCHES), {"n": args.searches, "products": products})
            conn.execute(text(EVENTS), {"clicked": args.clicked})
            events = conn.execute(
                text("SELECT count(*) FROM imgsearch.search_events e JOIN imgsearch.search_queries q USING (query_id) "
                     "WHERE q.query_attributes->>'bench' = :m"), {"m": MARK}
            ).scalar_one()  # fmt: skip
            conn.execute(text("ANALYZE imgsearch.search_queries, imgsearch.search_events"))
        print(f"{args.searches:,} searches of 10 hits, {events:,} events; refresh of the shop acme")
        times: dict[str, list[float]] = {way: [] for way in computes}
        answers: dict[str, list[Any]] = {}
        for round_ in range(3):
            for way in computes if round_ % 2 == 0 else reversed(computes):
                boosts._COMPUTE = computes[way]
                started = time.perf_counter()
                done = boosts.refresh(engine, boosts.Policy(), tenant="acme")
                times[way].append(time.perf_counter() - started)
                answers[way] = written(engine)
                print(f"  round {round_ + 1}, {way}: {times[way][-1]:.2f} s, {done.query_boosts} + {done.product_boosts} boosts", flush=True)
        assert answers["before"] == answers["now"], "the boosts differ"
        base = statistics.median(times["before"])
        print("\n| the boosts job | refresh p50 s | ratio |\n|---|---:|---:|")
        for way in computes:
            p50 = statistics.median(times[way])
            print(f"| {way} | {p50:.2f} | **{p50 / base:.2f}x** |")
    finally:
        boosts._COMPUTE = computes["now"]
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM imgsearch.search_events e USING imgsearch.search_queries q WHERE e.query_id = q.query_id "
                     "AND q.query_attributes->>'bench' = :m"), {"m": MARK}
            )  # fmt: skip
            conn.execute(text("DELETE FROM imgsearch.search_queries WHERE query_attributes->>'bench' = :m"), {"m": MARK})
        boosts.refresh(engine, boosts.Policy(), tenant="acme")
        engine.dispose()


if __name__ == "__main__":
    main()
