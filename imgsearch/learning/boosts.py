"""The boosts job: each tenant's feedback of the last ``window_days`` turned into a boost per
(normalised query, product) and per product (``query_norm`` ''), which searches blend into their
ranking (:mod:`imgsearch.search.boosting`).

Position bias is taken out with COEC (clicks over expected clicks): a tenant's click rate at each
position (clicks per impression there; a search's hits are its impressions) says how many clicks
a product would get from where it was shown alone; a product clicked more than that is preferred.
Each position's rate starts from a prior, an examination curve (shoppers look at position p about
``1 / log2(p + 1)`` as often as at the first, DCG's discount) scaled to the tenant's own clicks
per impression, worth ``position_prior`` impressions; the tenant's clicks there move it in
proportion to its impressions there. A small shop whose shoppers click its 8th hit every time then
learns that the 8th hit is good, not that position 8 draws every click.
Engagement counts a search's click on a product once and its add-to-cart or purchase once (weight
``conversion_weight``), against the clicks expected times the tenant's conversions per click.
The ratio is smoothed toward 1 with ``prior`` expected engagements of evidence (a Bayesian
prior: few impressions say little), and its logarithm, relative to ``full_ratio``'s, is the boost,
from 0 (no better than its positions predict) to 1. A pair needs ``min_clicks`` clicks or
``min_conversions`` conversions in the window to get one; the rest rank as they would without.

A shop learns from the searches that named it (an admin's search across shops, recorded under
tenant '', teaches none), and every statement here joins a search's rows to its own shop's
products: on a Citus cluster a shop's refresh runs on its node alone.

``imgsearch boosts refresh`` runs it at once; Celery beat every ``IMGSEARCH_BOOST_REFRESH_SECONDS``.
Each run also prepares the logs' coming partitions and drops what is past the retention.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from imgsearch.errors import InvalidInput
from imgsearch.hooks import outbox
from imgsearch.ingest import checks


@dataclass(frozen=True)
class Policy:
    """What makes a boost (the settings ``IMGSEARCH_BOOST_*``)."""

    window_days: int = 30
    min_clicks: int = 20
    min_conversions: int = 2
    prior: float = 5.0
    conversion_weight: float = 3.0
    full_ratio: float = 4.0
    retention_days: int = 90
    position_prior: float = 100.0  # impressions of evidence the examination curve counts as, per position

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            window_days=settings.boost_window_days,
            min_clicks=settings.boost_min_clicks,
            min_conversions=settings.boost_min_conversions,
            prior=settings.boost_prior,
            conversion_weight=settings.boost_conversion_weight,
            full_ratio=settings.boost_full_ratio,
            retention_days=settings.event_retention_days,
            position_prior=settings.boost_position_prior,
        )


@dataclass(frozen=True)
class Refreshed:
    """One run: boosts written per (query, product) and per product, tenants with any, and what
    the logs' maintenance did."""

    query_boosts: int
    product_boosts: int
    tenants: int
    partitions_created: int
    partitions_dropped: int


# each (normalised query, product) and product (query_norm ''): engagement, expected, ratio
SCORED = """
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
), placed AS (  -- a tenant's impressions at each position, and the examination curve there
    SELECT s.tenant, s.position, count(*) AS n, 1 / log(2, s.position + 1) AS examined
    FROM shown s GROUP BY s.tenant, s.position
), shop AS (  -- the tenant's clicks per impression, and the examination curve's mean over its impressions
    SELECT i.tenant,
           coalesce((SELECT sum(a.clicked) FROM acted a WHERE a.tenant = i.tenant), 0)::float8 / sum(i.n)::bigint AS rate,
           sum(i.n * i.examined) / sum(i.n) AS examined
    FROM placed i GROUP BY i.tenant
), at_position AS (  -- the position bias: clicks per impression at each position, from the prior
    SELECT i.tenant, i.position,
           (coalesce((SELECT sum(a.clicked) FROM acted a WHERE a.tenant = i.tenant AND a.position = i.position), 0)
            + :position_prior * h.rate * i.examined / h.examined)::float8
           / (i.n + :position_prior) AS rate
    FROM placed i JOIN shop h ON h.tenant = i.tenant
), per_click AS (
    SELECT a.tenant, coalesce(sum(a.converted)::float8 / nullif(sum(a.clicked), 0), 0) AS conversions
    FROM acted a GROUP BY a.tenant
), engaged AS (
    SELECT a.tenant, CASE WHEN grouping(a.query_norm) = 1 THEN '' ELSE a.query_norm END AS query_norm,
           a.product_pk, sum(a.clicked)::int AS clicks, sum(a.converted)::int AS conversions
    FROM acted a
    GROUP BY GROUPING SETS ((a.tenant, a.query_norm, a.product_pk), (a.tenant, a.product_pk))
), evidenced AS MATERIALIZED (  -- the products with a pair engaged enough to be scored
    SELECT DISTINCT g.tenant, g.product_pk FROM engaged g
    WHERE g.query_norm IS NOT NULL AND (g.clicks >= :min_clicks OR g.conversions >= :min_conversions)
), expected AS (  -- summed over those products' impressions alone (a scored pair's are all among them)
    SELECT s.tenant, CASE WHEN grouping(s.query_norm) = 1 THEN '' ELSE s.query_norm END AS query_norm,
           s.product_pk, sum(r.rate) AS clicks
    FROM shown s
    JOIN evidenced v ON v.tenant = s.tenant AND v.product_pk = s.product_pk
    JOIN at_position r ON r.tenant = s.tenant AND r.position = s.position
    GROUP BY GROUPING SETS ((s.tenant, s.query_norm, s.product_pk), (s.tenant, s.product_pk))
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
"""

_COMPUTE = SCORED + """
INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, conversions, expected)
SELECT s.product_pk, s.query_norm, s.tenant, p.product_id, least(1.0, ln(s.ratio) / ln(:full_ratio)),
       s.clicks, s.conversions, s.expected
FROM scored s JOIN imgsearch.products p ON p.tenant = s.tenant AND p.id = s.product_pk
WHERE s.ratio > 1 AND least(1.0, ln(s.ratio) / ln(:full_ratio)) >= 0.001
RETURNING query_norm = '' AS per_product, tenant
"""


def refresh(engine: Engine, policy: Policy, tenant: str | None = None) -> Refreshed:
    """Compute every boost again (of ``tenant``'s, with one) in one transaction: searches see
    the old boosts until it commits, then the new ones."""
    if tenant is not None:
        tenant = checks.identifier(tenant, "tenant")
    for name in ("window_days", "min_clicks", "min_conversions", "retention_days"):
        value = getattr(policy, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if "days" in name else 0):
            raise InvalidInput(f"boost {name} must be a whole number of at least {int('days' in name)}")
    if not policy.full_ratio > 1 or not policy.prior > 0 or policy.conversion_weight < 0:
        raise InvalidInput("boost full_ratio must be above 1, prior above 0 and conversion_weight at least 0")
    if not policy.position_prior >= 0:
        raise InvalidInput(f"boost position_prior must be 0 or more, got {policy.position_prior!r}")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=policy.window_days)
    with engine.begin() as conn:
        kept = conn.execute(
            text("SELECT imgsearch.maintain_feedback_log(:days)"), {"days": policy.retention_days}
        ).scalar_one()
        conn.execute(
            text("DELETE FROM imgsearch.boosts WHERE CAST(:tenant AS text) IS NULL OR tenant = :tenant"),
            {"tenant": tenant},
        )
        rows = conn.execute(
            text(_COMPUTE),
            {
                "since": since,
                "tenant": tenant,
                "prior": float(policy.prior),
                "conversion_weight": float(policy.conversion_weight),
                "full_ratio": float(policy.full_ratio),
                "position_prior": float(policy.position_prior),
                "min_clicks": policy.min_clicks,
                "min_conversions": policy.min_conversions,
            },
        ).all()
        learned = Counter((row.tenant, bool(row.per_product)) for row in rows)
        for shop in [tenant] if tenant else outbox.live_tenants(conn):
            counts = {"query_boosts": learned[shop, False], "product_boosts": learned[shop, True]}
            outbox.emit(conn, shop, "boosts.refreshed", counts)  # searches see them when it commits
    per_product = sum(1 for row in rows if row.per_product)
    return Refreshed(
        query_boosts=len(rows) - per_product,
        product_boosts=per_product,
        tenants=len({row.tenant for row in rows}),
        partitions_created=int(kept["created"]),
        partitions_dropped=int(kept["dropped"]),
    )
