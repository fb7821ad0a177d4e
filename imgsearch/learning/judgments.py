"""Evaluation without guessing: graded judgments from shoppers' events, and ranking variants
compared on them offline.

For each normalised text query with feedback since ``since``, a product's grade comes from its
clicks over expected clicks (COEC), with position bias taken out by the cascade model: in a search
with clicks, the hits at or above the last click were read, those below weren't. Expected clicks
are a product's readings times the tenant's clicks per reading; the ratio is smoothed with the
policy's prior. (The boosts' expectation, the click rate at each position, would grade a ranking
against itself: a good product lifted to the top meets the top's high rate.)

* 3: bought or added to a cart, and clicked at least as often as expected;
* 2: clicked 1.5 times as often as expected or more;
* 1: clicked, and more than expected;
* 0, not listed: read and passed over.

Judgments taken from the events the live boosts were learned from favour the boosts: by default,
only events after the boosts' last refresh count (``since``).

The variants are ``plain`` (boosts and adapter off), ``boost``, ``adapter`` and ``both``; each
query runs once per variant (its most frequent spelling, ``parse=False``), scored by nDCG@k, MRR,
recall@k and precision@k (:func:`imgsearch.quality.evaluation.metrics`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput
from imgsearch.ingest import checks
from imgsearch.learning.boosts import Policy
from imgsearch.learning.interleave import VARIANTS
from imgsearch.quality.evaluation import metrics

if TYPE_CHECKING:
    from imgsearch.catalog import Catalog

@dataclass(frozen=True)
class Judged:
    """Judged queries: their text as shoppers typed it most, and their products' grades."""

    queries: list[tuple[str, dict[str, float]]]
    since: dt.datetime


# clicks over expected clicks, with the cascade model's examination: in a search with clicks, the
# hits at or above its last click were read; expected = examinations x the tenant's clicks per
# examination; smoothed with the policy's prior
_JUDGED = """
WITH searches AS (
    SELECT q.query_id, q.query_norm, q.result_offset, q.product_pks, max(e.position) AS last_click
    FROM imgsearch.search_queries q
    JOIN imgsearch.search_events e ON e.tenant = q.tenant AND e.query_id = q.query_id
        AND q.searched_at = uuid_extract_timestamp(e.query_id)
    WHERE q.tenant = :tenant AND e.action_name = 'click' AND e.occurred_at >= :since AND q.query_norm IS NOT NULL
    GROUP BY q.query_id, q.query_norm, q.result_offset, q.product_pks
), examined AS (
    SELECT s.query_id, s.query_norm, h.pk AS product_pk
    FROM searches s CROSS JOIN LATERAL unnest(s.product_pks) WITH ORDINALITY AS h(pk, n)
    WHERE s.result_offset + h.n <= s.last_click
), acted AS (
    SELECT e.query_id, e.product_pk, bool_or(e.action_name = 'click')::int AS clicked,
           bool_or(e.action_name IN ('add_to_cart', 'purchase'))::int AS converted
    FROM imgsearch.search_events e
    WHERE e.tenant = :tenant AND e.occurred_at >= :since AND e.action_name <> 'impression'
    GROUP BY e.query_id, e.product_pk
), pairs AS (
    SELECT x.query_norm, x.product_pk, count(*) AS examined, coalesce(sum(a.clicked), 0) AS clicks,
           coalesce(sum(a.converted), 0) AS conversions
    FROM examined x LEFT JOIN acted a ON a.query_id = x.query_id AND a.product_pk = x.product_pk
    GROUP BY x.query_norm, x.product_pk
), rate AS (
    SELECT sum(clicks)::float8 / nullif(sum(examined), 0) AS per_examination FROM pairs
), scored AS (
    SELECT p.*, (p.clicks + :prior) / (p.examined * r.per_examination + :prior) AS ratio FROM pairs p, rate r
)
SELECT s.query_norm, p.product_id,
       CASE WHEN s.conversions > 0 AND s.ratio >= 1 THEN 3
            WHEN s.ratio >= 1.5 THEN 2
            WHEN s.clicks > 0 AND s.ratio > 1 THEN 1
            ELSE 0 END AS grade
FROM scored s JOIN imgsearch.products p ON p.tenant = :tenant AND p.id = s.product_pk
"""

_SPELLINGS = """
SELECT DISTINCT ON (query_norm) query_norm, user_query FROM (
    SELECT query_norm, user_query, count(*) AS n FROM imgsearch.search_queries
    WHERE tenant = :tenant AND searched_at >= :since AND query_norm IS NOT NULL GROUP BY query_norm, user_query
) AS counted ORDER BY query_norm, n DESC, user_query
"""


def from_events(engine: Engine, tenant: str, policy: Policy, since: dt.datetime | None = None) -> Judged:
    """``tenant``'s judged queries from its events since ``since`` (default: the boosts' last
    refresh, else the policy's window)."""
    tenant = checks.identifier(tenant, "tenant")
    with tenancy.begin(engine, tenant) as conn:
        if since is None:
            since = conn.execute(
                text("SELECT max(computed_at) FROM imgsearch.boosts WHERE tenant = :tenant"), {"tenant": tenant}
            ).scalar()
        if since is None:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(days=policy.window_days)
        rows = conn.execute(text(_JUDGED), {"since": since, "prior": float(policy.prior), "tenant": tenant}).all()
        spelled = conn.execute(text(_SPELLINGS), {"since": since, "tenant": tenant})
        spellings: dict[str, str] = {norm: typed for norm, typed in spelled}
    grades: dict[str, dict[str, float]] = {}
    for query_norm, product_id, grade in rows:
        if grade > 0:
            grades.setdefault(query_norm, {})[product_id] = float(grade)
    queries = [(spellings.get(norm, norm), found) for norm, found in sorted(grades.items())]
    return Judged(queries, since)


def compare(
    catalog: Catalog, tenant: str, judged: Judged, k: int = 10, variants: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Each variant's mean metrics over the judged queries (searches not recorded as shoppers'
    only when the catalog's ``record_queries`` is off)."""
    names = variants or list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise InvalidInput(f"variants are {', '.join(VARIANTS)}, got {', '.join(unknown)}")
    if not judged.queries:
        raise InvalidInput(
            f"no judged queries: no text searches of {tenant} with clicks or purchases since {judged.since:%Y-%m-%d %H:%M}"
        )
    found: dict[str, dict[str, float]] = {}
    for name in names:
        scores: list[dict[str, float]] = []
        for query, relevant in judged.queries:
            flags = VARIANTS[name]
            result = catalog.search(
                text=query, tenant=tenant, k=k, parse=False, boost=flags["boost"], adapter=flags["adapter"]
            )
            scores.append(metrics([hit.product_id for hit in result], relevant, k))
        found[name] = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
        found[name]["queries"] = float(len(scores))
    return found


def table(found: dict[str, dict[str, Any]], k: int) -> str:
    lines = [f"| variant | queries | nDCG@{k} | MRR | recall@{k} | precision@{k} |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in found.items():
        lines.append(
            f"| {name} | {int(m['queries'])} | {m['ndcg']:.3f} | {m['rr']:.3f} | {m['recall']:.3f} | {m['precision']:.3f} |"
        )
    return "\n".join(lines)
