"""Online comparison of two ranking variants by team-draft interleaving (Radlinski et al., 2008).

A search with ``interleave="A,B"`` runs both variants (``plain``: boosts and adapter off;
``boost``; ``adapter``; ``both``) and drafts their hits in turns: the team with fewer picks (a coin
at a tie) adds its best hit not on the page yet. The page and each position's team are recorded
with the search. A click then credits its hit's team. The team with more clicks wins that search,
and :func:`report` counts the wins per pair of variants. Each shopper sees one page, blended
fairly, and no traffic is split.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidQuery
from imgsearch.ingest import checks
from imgsearch.records import SearchResult

VARIANTS: dict[str, dict[str, bool]] = {
    "plain": {"boost": False, "adapter": False},
    "boost": {"boost": True, "adapter": False},
    "adapter": {"boost": False, "adapter": True},
    "both": {"boost": True, "adapter": True},
}


def parse(value: Any) -> tuple[str, str]:
    """``"A,B"``: two different variants."""
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else []
    if len(names) != 2 or names[0] == names[1] or any(name not in VARIANTS for name in names):
        raise InvalidQuery(f"interleave takes two different variants of {', '.join(VARIANTS)} as 'A,B', got {value!r}")
    return names[0], names[1]


def team_draft(
    a: SearchResult, b: SearchResult, k: int, seed: int, skip: int = 0
) -> tuple[SearchResult, list[str]]:
    """Up to ``k`` hits drafted from ``a`` and ``b`` (one per product), and each one's team; the
    first ``skip`` of them left out (a page after the first)."""
    coin = random.Random(seed)
    picked: list[Any] = []
    teams: list[str] = []
    seen: set[tuple[str, str]] = set()
    lists = {"A": list(a), "B": list(b)}
    counts = {"A": 0, "B": 0}
    while len(picked) < k:
        left = {team: [h for h in hits if (h.tenant, h.product_id) not in seen] for team, hits in lists.items()}
        if not left["A"] and not left["B"]:
            break
        if counts["A"] != counts["B"]:
            team = "A" if counts["A"] < counts["B"] else "B"
        else:
            team = "A" if coin.random() < 0.5 else "B"
        if not left[team]:
            team = "B" if team == "A" else "A"
        hit = left[team][0]
        seen.add((hit.tenant, hit.product_id))
        picked.append(hit)
        teams.append(team)
        counts[team] += 1
    merged = SearchResult(
        picked[skip:], total=a.total, facets=a.facets, understood=a.understood, mode=a.mode,
        total_relation=a.total_relation,
    )
    return merged, teams[skip:]


@dataclass(frozen=True)
class Comparison:
    """Interleaved searches of one pair of variants with at least one click: the searches each
    variant's hits drew more clicks in, the ties, and the two-sided sign test's p-value."""

    a: str
    b: str
    wins_a: int
    wins_b: int
    ties: int
    clicks_a: int
    clicks_b: int

    @property
    def p_value(self) -> float:
        n = self.wins_a + self.wins_b
        if n == 0:
            return 1.0
        low = min(self.wins_a, self.wins_b)
        tail: float = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
        return min(1.0, 2 * tail)

    def line(self) -> str:
        leader = self.a if self.wins_a > self.wins_b else self.b if self.wins_b > self.wins_a else "neither"
        return (
            f"{self.a} vs {self.b}: {self.wins_a} wins / {self.wins_b} wins / {self.ties} ties "
            f"({self.clicks_a} / {self.clicks_b} clicks); {leader} leads, sign test p = {self.p_value:.3g}"
        )


_CREDITS = """
SELECT q.query_id, q.query_attributes->'interleave'->'variants'->>0 AS a,
       q.query_attributes->'interleave'->'variants'->>1 AS b,
       count(*) FILTER (WHERE (q.query_attributes->'interleave'->'teams')->>(e.position - q.result_offset - 1) = 'A')
           AS clicks_a,
       count(*) FILTER (WHERE (q.query_attributes->'interleave'->'teams')->>(e.position - q.result_offset - 1) = 'B')
           AS clicks_b
FROM imgsearch.search_events e
JOIN imgsearch.search_queries q ON q.tenant = e.tenant AND q.query_id = e.query_id
    AND q.searched_at = uuid_extract_timestamp(e.query_id)
WHERE e.tenant = :tenant AND e.action_name = 'click' AND e.occurred_at >= :since
  AND q.query_attributes ? 'interleave'
GROUP BY q.query_id, q.query_attributes
"""


def report(engine: Engine, tenant: str, days: int = 30) -> list[Comparison]:
    """Each pair of variants ``tenant`` interleaved in the last ``days``, credited by clicks."""
    tenant = checks.identifier(tenant, "tenant")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with tenancy.begin(engine, tenant) as conn:
        rows = conn.execute(text(_CREDITS), {"since": since, "tenant": tenant}).all()
    tally: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        counts = tally.setdefault((row.a, row.b), [0, 0, 0, 0, 0])
        counts[0 if row.clicks_a > row.clicks_b else 1 if row.clicks_b > row.clicks_a else 2] += 1
        counts[3] += row.clicks_a
        counts[4] += row.clicks_b
    return [Comparison(a, b, *counts) for (a, b), counts in sorted(tally.items())]
