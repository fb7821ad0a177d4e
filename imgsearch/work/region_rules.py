"""Where a catalog's regions come from: its rule and its categories' own (migration 0040).

The catalog's rule is the row of category ``''``; a category's row overrides it for that
category's images (an image of several products takes its first product's). Workers read the
rules with each batch they claim (:func:`rules_for_images`); searches only ask whether any rule is
on (:func:`any_on`), to know that images may have several rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Connection, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from imgsearch.db.models import Embedding, RegionRule
from imgsearch.embed.regions import OFF, Rule
from imgsearch.errors import InvalidRegions
from imgsearch.ingest import checks

CATALOG = ""  # the category key of the catalog's own rule


def _category(category: str | None) -> str:
    if category is None:
        return CATALOG
    return checks.identifier(category, "category", InvalidRegions)


def set_rule(conn: Connection, rule: Rule, category: str | None = None) -> int:
    """Set the catalog's rule (or ``category``'s). Turning a category off, or the catalog off
    with no category rule left on, deletes the region rows it no longer wants; returns how many."""
    key = _category(category)
    values = asdict(rule)
    values["labels"] = list(rule.labels) or None
    conn.execute(
        pg_insert(RegionRule)
        .values(category=key, **values)
        .on_conflict_do_update(index_elements=[RegionRule.category], set_=values)
    )
    if rule.on:
        return 0
    return drop_rows(conn, None if key == CATALOG else key)


def drop_rows(conn: Connection, category: str | None) -> int:
    """Delete the region rows that the rules no longer want: ``category``'s, or (None) those of
    every image whose rule is off."""
    rules = read(conn)
    if category is not None:
        gone = delete(Embedding).where(Embedding.region > 0, Embedding.category == category)
        return int(conn.execute(gone).rowcount)
    if rules.get(CATALOG, OFF).on:
        return 0
    kept = [c for c, r in rules.items() if c != CATALOG and r.on]
    gone = delete(Embedding).where(Embedding.region > 0)
    if kept:
        gone = gone.where(Embedding.category.is_(None) | Embedding.category.not_in(kept))
    return int(conn.execute(gone).rowcount)


def clear(conn: Connection, category: str) -> None:
    """Remove a category's own rule: its images follow the catalog's again."""
    conn.execute(delete(RegionRule).where(RegionRule.category == _category(category)))


def read(conn: Connection) -> dict[str, Rule]:
    """Every rule by category (``''``: the catalog's)."""
    return {
        r.category: Rule(
            source=r.source,
            grid=r.grid,
            detector=r.detector,
            labels=tuple(r.labels or ()),
            min_score=float(r.min_score),
            min_area=float(r.min_area),
            max_regions=int(r.max_regions),
        )
        for r in conn.execute(select(RegionRule))
    }


def any_on(conn: Connection) -> bool:
    """Whether any rule is on (then an image may have region rows beside its whole row)."""
    # imgsearch._regions_on (migration 0041): every role may ask, only the catalog's roles read the rules
    return bool(conn.execute(text("SELECT imgsearch._regions_on()")).scalar())


# each image's products' categories (a join in the tenant: on a Citus cluster, on each shop's node)
_CATEGORIES = text(
    "SELECT l.image_id, l.product_pk, p.category FROM imgsearch.image_products l "
    "JOIN imgsearch.products p ON p.id = l.product_pk AND p.tenant = l.tenant "
    "WHERE l.image_id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))


ClaimsT = TypeVar("ClaimsT", bound=Sequence[Any])


def attach(conn: Connection, claims: ClaimsT) -> ClaimsT:
    """Each claim (``image_id``, ``regions``) given its image's rule, read in the claim's transaction."""
    rules = rules_for_images(conn, [c.image_id for c in claims]) if claims else {}
    for c in claims:
        c.regions = rules.get(c.image_id)
    return claims


def rules_for_images(conn: Connection, image_ids: Sequence[int]) -> dict[int, Rule]:
    """The rule of each image whose rule is on (its first product's category's, else the
    catalog's); an image without regions isn't there."""
    rules = read(conn)
    if not image_ids or not any(rule.on for rule in rules.values()):
        return {}
    catalog = rules.get(CATALOG, OFF)
    first: dict[int, tuple[int, str | None]] = {}  # each image's first product's category
    for row in conn.execute(_CATEGORIES, {"ids": sorted(set(image_ids))}):
        image_id = int(row.image_id)
        if image_id not in first or int(row.product_pk) < first[image_id][0]:
            first[image_id] = (int(row.product_pk), row.category)
    found: dict[int, Rule] = {}
    for image_id, (_, category) in first.items():
        rule = catalog if category is None else rules.get(category, catalog)
        if rule.on:
            found[image_id] = rule
    return found

