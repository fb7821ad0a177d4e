"""Binary codes: each embedding's sign bits, compared first by a search whose filter lies far.

When a filter's rows lie away from the query, the model's HNSW graph comes short and the search
has to look at every matching row. Reading a row's full vector from the table costs 2.75 us;
its code (``binary_quantize(embedding)``: one bit a dimension, 96 bytes at 768, kept by
PostgreSQL in the column ``code``, migration 0043) comes from an index-only scan of
``embeddings_tenant_category_price_idx``, which carries it, at 0.73 us
(bench/search/far_filters.py). A far filter of more than :data:`MIN_ROWS` rows takes the
:data:`POOL` rows nearest by Hamming distance and re-ranks them by their full cosine distance
(:func:`imgsearch.search.statements.filtered_statement`, its ``codes`` part). Below
:data:`MIN_ROWS` the exact scan is cheaper than the re-rank.

* Recall depends on the data: sign bits keep a vector's direction only where its strongest
  directions lie off the coordinate axes and its neighbours stand out (real image embeddings do;
  isotropic noise doesn't). So each model's codes are checked (:func:`check`) on its own rows
  against an exact search, and searches use them only from :data:`MIN_RECALL` up
  (:func:`usable`); :func:`imgsearch.db.filter_indexes.refresh` (the import, ``imgsearch index
  refresh``, the workers' sweep) checks again when the model's rows have doubled or halved.
* The check is made as the searches will use the codes: a set of whole categories as the filter
  (the largest share of the catalog a search scans this way, the settings' ``exact_max_fraction``),
  probed with rows of other categories (far queries, the case the codes are for) and rows of
  its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import math

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from imgsearch.db import citus
from imgsearch.db.models import SCHEMA
from imgsearch.records import ModelInfo
from imgsearch.settings import Settings

log = logging.getLogger(__name__)

MIN_RECALL = 0.98  # codes finding less of an exact search's top 10 at their check aren't used
POOL = 400  # rows nearest by Hamming distance, re-ranked by their full distance
# below this many matching rows the exact scan costs less than the re-rank: at 100k calibrated
# rows, 981 rows cost 1.17x their exact scan, 1,934 rows 0.68x (bench/search/far_codes.py
# --thresholds, docs/benchmarks.md); the same as the exact scan's own bound, EXACT_MAX_ROWS' default
MIN_ROWS = 1500
PROBES = 12  # queries of the check: rows of other categories (far queries), then its own
PROBE_K = 10
# the filter of the check: the largest share of the catalog a search scans exactly or by codes
SHARE: float = Settings.model_fields["exact_max_fraction"].default
RECHECK = 2.0  # the check is made again when the model's rows have grown or shrunk this much


def usable(conn: Connection, model_id: int) -> bool:
    """Whether searches of the model may read its codes: its last check kept :data:`MIN_RECALL`."""
    last = last_check(conn, model_id)
    return last is not None and last[1] >= MIN_RECALL


def last_check(conn: Connection, model_id: int) -> tuple[int, float, dt.datetime] | None:
    """The model's last check: its rows, the recall found and when; None before the first."""
    row = conn.execute(
        text(f"SELECT rows, recall, checked_at FROM {SCHEMA}.binary_code_checks WHERE model_id = :m"),
        {"m": int(model_id)},
    ).one_or_none()
    return None if row is None else (int(row.rows), float(row.recall), row.checked_at)


def describe(check: tuple[int, float, dt.datetime] | None) -> str:
    """One line on a model's codes, for ``imgsearch index``."""
    if check is None:
        return "binary codes: not checked yet (imgsearch index refresh checks them); far filters scan exactly"
    rows, recall, when = check
    use = "far filters read them" if recall >= MIN_RECALL else f"below {MIN_RECALL}: far filters scan exactly"
    return (
        f"binary codes: recall@{PROBE_K} {recall:.3f} over {rows} rows, checked {when:%Y-%m-%d %H:%M}; {use}"
    )


def check_if_due(conn: psycopg.Connection, model: ModelInfo) -> float | None:
    """:func:`check` when the model has rows and no check yet, or its rows have grown or shrunk
    :data:`RECHECK` times since; the recall found, or None when no check was due (or on a Citus
    coordinator, whose searches don't read the codes)."""
    on_coordinator = conn.execute(citus.IS_COORDINATOR).fetchone()
    if on_coordinator is not None and on_coordinator[0]:
        return None  # a Citus coordinator's searches don't read the codes (imgsearch.search.routing)
    rows = _rows(conn, model)
    if rows == 0:
        return None
    last = conn.execute(
        f"SELECT rows FROM {SCHEMA}.binary_code_checks WHERE model_id = %s", (int(model.id),)
    ).fetchone()
    if last is not None and int(last[0]) / RECHECK <= rows <= int(last[0]) * RECHECK:
        return None
    return check(conn, model, rows)


def check(conn: psycopg.Connection, model: ModelInfo, rows: int | None = None) -> float:
    """Recall@10 of the codes, re-ranked as searches re-rank them, against an exact search, on
    the model's rows (see the module's docstring); recorded for :func:`usable`. ``conn``: in
    autocommit (the check's table of rows lives for its transaction); ``rows``: the model's
    whole rows, when the caller has just counted them."""
    rows = _rows(conn, model) if rows is None else rows
    found = wanted = 0
    with conn.transaction():
        queries = _filter_rows(conn, model, rows)
        exact = sql.SQL(
            "SELECT image_id FROM code_check_rows WHERE image_id IS DISTINCT FROM %(own)s "
            "ORDER BY embedding <=> %(q)s::halfvec LIMIT {k}"
        ).format(k=sql.Literal(PROBE_K))
        codes = sql.SQL(
            "SELECT image_id FROM (SELECT image_id, embedding FROM code_check_rows "
            "WHERE image_id IS DISTINCT FROM %(own)s "
            "ORDER BY code <~> binary_quantize(%(q)s::halfvec) LIMIT {pool}) c "
            "ORDER BY embedding <=> %(q)s::halfvec LIMIT {k}"
        ).format(pool=sql.Literal(POOL), k=sql.Literal(PROBE_K))
        for query, own in queries:
            values = {"q": query, "own": own}
            truth = {r[0] for r in conn.execute(exact, values)}
            near = {r[0] for r in conn.execute(codes, values)}
            found += len(near & truth)
            wanted += len(truth)
    recall = found / wanted if wanted else 1.0
    conn.execute(
        f"INSERT INTO {SCHEMA}.binary_code_checks (model_id, rows, recall) VALUES (%s, %s, %s) "
        "ON CONFLICT (model_id) DO UPDATE SET rows = excluded.rows, recall = excluded.recall, checked_at = excluded.checked_at",
        (int(model.id), rows, recall),
    )
    level = logging.INFO if recall >= MIN_RECALL else logging.WARNING
    log.log(
        level,
        "the binary codes of %s found %.3f of an exact search's top %d over %d rows: far filters %s",
        model.name,
        recall,
        PROBE_K,
        rows,
        "compare codes first" if recall >= MIN_RECALL else "keep scanning exactly",
    )
    return recall


def _rows(conn: psycopg.Connection, model: ModelInfo) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM {SCHEMA}.embeddings WHERE model_id = %s AND region = 0", (int(model.id),)
    ).fetchone()
    return int(row[0]) if row else 0


def _filter_rows(conn: psycopg.Connection, model: ModelInfo, rows: int) -> list[tuple[str, int | None]]:
    """The check's filter, the table ``code_check_rows``: whole categories in an order of their
    names' hashes until :data:`SHARE` of the rows (at least :data:`MIN_ROWS`), or a share of the
    rows by their key's hash when the model's rows have fewer than two categories. Returns the
    probes, each a vector and the image it excludes: :data:`PROBES` two thirds from the other
    rows (far queries; none own), a third from the filter's (each excluding its own image)."""
    target = min(rows, max(MIN_ROWS, math.ceil(SHARE * rows)))
    categories = conn.execute(
        f"SELECT category, count(*) FROM {SCHEMA}.embeddings WHERE model_id = %s AND region = 0 "
        "AND category IS NOT NULL GROUP BY category ORDER BY hashtext(category), category",
        (int(model.id),),
    ).fetchall()
    chosen: list[str] = []
    taken = 0
    for category, n in categories:
        if taken >= target:
            break
        chosen.append(str(category))
        taken += int(n)
    by_category = len(categories) >= 2 and len(chosen) < len(categories)
    inside = (
        sql.SQL("category = ANY(%(chosen)s)")
        if by_category
        else sql.SQL("abs(hashint8(image_id)) %% 10000 < %(share)s")
    )
    values = {
        "model": int(model.id),
        "chosen": chosen,
        "share": math.ceil(10000 * target / max(rows, 1)),
        "far": PROBES * 2 // 3,
        "near": PROBES - PROBES * 2 // 3,
    }
    schema = sql.Identifier(SCHEMA)
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE code_check_rows ON COMMIT DROP AS SELECT image_id, embedding, code "
            "FROM {schema}.embeddings WHERE model_id = %(model)s AND region = 0 AND {inside}"
        ).format(schema=schema, inside=inside),
        values,
    )
    return [
        (str(q), None if own is None else int(own))
        for q, own in conn.execute(
            sql.SQL(
                "(SELECT embedding::text, NULL::bigint FROM {schema}.embeddings WHERE model_id = %(model)s "
                "AND region = 0 AND NOT ({inside}) ORDER BY image_id DESC LIMIT %(far)s) UNION ALL "
                "(SELECT embedding::text, image_id FROM code_check_rows ORDER BY hashint8(image_id + 1) "
                "LIMIT %(near)s)"
            ).format(schema=schema, inside=inside),
            values,
        ).fetchall()
    ]
