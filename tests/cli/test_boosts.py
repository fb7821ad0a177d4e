"""``imgsearch boosts refresh`` as a subprocess: boosts learned from recorded feedback, one line
of summary, one line for a mistake."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from imgsearch import Catalog
from tests.helpers import run_cli


def test_refresh_learns_the_boosts_now(database_url: str, tiny_siglip: Path) -> None:
    rng = np.random.default_rng(5)
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many(
            [{"tenant": "acme", "product_id": f"sku-{i}", "embedding": rng.standard_normal(catalog.dim)}
             for i in range(12)]
        )  # fmt: skip
        query = rng.standard_normal(catalog.dim)
        events: list[dict[str, Any]] = []
        for i in range(6):
            found = catalog.search(vector=query, tenant="acme", k=5)
            events.append({"query_id": found.query_id, "action": "click", "object_id": found[4].product_id,
                           "position": 5})  # fmt: skip
            if i < 3:
                events.append({"query_id": found.query_id, "action": "click", "object_id": found[0].product_id,
                               "position": 1})  # fmt: skip
        other = rng.standard_normal(catalog.dim)  # another query: its fifth hit goes unclicked
        for _ in range(6):
            found_other = catalog.search(vector=other, tenant="acme", k=5)
            events.append({"query_id": found_other.query_id, "action": "click",
                           "object_id": found_other[0].product_id, "position": 1})  # fmt: skip
        catalog.record_events("acme", events)
        fifth = found[4].product_id
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_BOOST_MIN_CLICKS": "3"}
    done = run_cli("boosts", "refresh", "--tenant", "acme", **env)
    assert done.returncode == 0, done.stderr
    assert "learning boosts from the feedback of the last 30 days" in done.stderr
    assert re.match(r"0 query boosts and [12] product boosts for 1 tenant\(s\) in [0-9.]+ s", done.stdout)
    with Catalog.open(database_url) as catalog, catalog.engine.connect() as conn:
        boosted = conn.execute(text("SELECT product_id FROM imgsearch.boosts")).scalars().all()
    assert fifth in boosted  # clicked at 5 every time, where the other query's fifth never was
    bad = run_cli("boosts", "refresh", "--tenant", "", **env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "tenant" in bad.stderr
