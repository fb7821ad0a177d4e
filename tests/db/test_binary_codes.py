"""Binary codes (imgsearch/db/binary_codes.py, migration 0043): kept by PostgreSQL for every row,
checked per model against an exact search, and read by far filters of a few thousand rows, from
an index-only scan, with the exact search's top k."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import make_url, text

from imgsearch import Catalog
from imgsearch.db import binary_codes, filter_indexes
from imgsearch.db.models import Embedding
from imgsearch.search import Filters, search_vector
from imgsearch.search.boosting import Boosting
from imgsearch.search.plans import Plan
from imgsearch.search.statements import codes_cover, filtered_statement
from imgsearch.settings import Settings
from tests.helpers import explain, explain_generic, run_cli

DIM = 768
CLUSTERS, PER_CLUSTER = 40, 200
FAR_CLUSTERS = 17  # 3,400 rows: past binary_codes.MIN_ROWS, within the bound below
SETTINGS = {"exact_max_fraction": 0.5}  # the bound: 4,000 of the 8,000 rows


def embeddings_like_real_ones(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors as image embeddings are: clusters in a few strong directions (a decaying
    spectrum), turned off the coordinate axes; and each row's cluster."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    scales = np.arange(1, DIM + 1) ** -1.0
    centres = rng.standard_normal((CLUSTERS, DIM)) * scales
    labels = np.repeat(np.arange(CLUSTERS), PER_CLUSTER)
    rows = (centres[labels] + rng.standard_normal((len(labels), DIM)) * scales * 0.35) @ basis.T
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), labels


def isotropic_noise(seed: int, n: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def add(catalog: Catalog, vectors: np.ndarray, labels: np.ndarray) -> None:
    """A bulk import (which checks the codes, as it refreshes the per-value graphs)."""
    rows = [
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": f"c{int(c):02d}", "price": 10 + i % 90}
        for i, (v, c) in enumerate(zip(vectors, labels, strict=True))
    ]  # fmt: skip
    assert catalog.import_vectors(rows, progress=False) == len(rows)
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE imgsearch.embeddings"))  # all visible: read index-only


@pytest.fixture
def shop(database_url: str) -> Iterator[tuple[Catalog, np.ndarray, np.ndarray]]:
    vectors, labels = embeddings_like_real_ones(seed=5)
    with Catalog.open(database_url, settings=Settings(**SETTINGS)) as catalog:
        add(catalog, vectors, labels)
        yield catalog, vectors, labels


def far_from(vectors: np.ndarray, labels: np.ndarray, q: np.ndarray, clusters: int) -> list[str]:
    """The ``clusters`` categories whose rows lie farthest from ``q`` on average."""
    mean = np.array([vectors[labels == c].mean(axis=0) @ q for c in range(CLUSTERS)])
    return [f"c{int(c):02d}" for c in np.argsort(mean)[:clusters]]


def exact_top(catalog: Catalog, q: np.ndarray, k: int, **where: Any) -> list[int]:
    conditions = " AND ".join(f"{column} = ANY(:{column})" for column in where) or "true"
    with catalog.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    f"SELECT image_id FROM imgsearch.embeddings WHERE {conditions} "
                    "ORDER BY embedding <=> CAST(:q AS halfvec) LIMIT :k"
                ),
                {"q": str(q.tolist()), "k": k, **where},
            ).scalars()
        )


def searched(catalog: Catalog, q: np.ndarray, **kwargs: Any) -> tuple[list[int], list[Plan]]:
    plans: list[Plan] = []
    catalog.on_search_plan = plans.append
    try:
        hits = catalog.search(vector=q, **kwargs)
    finally:
        catalog.on_search_plan = None
    return [h.image_id for h in hits], plans


def check_row(catalog: Catalog) -> tuple[int, float]:
    with catalog.engine.connect() as conn:
        rows, recall = conn.execute(
            text("SELECT rows, recall FROM imgsearch.binary_code_checks WHERE model_id = :m"),
            {"m": catalog.active_model.id},
        ).one()
    return int(rows), float(recall)


def test_every_row_keeps_its_vectors_sign_bits(shop: tuple[Catalog, np.ndarray, np.ndarray]) -> None:
    catalog, vectors, _ = shop
    with catalog.engine.connect() as conn:
        image_id, code = conn.execute(
            text(
                "SELECT e.image_id, e.code::text FROM imgsearch.embeddings e "
                "JOIN imgsearch.products p ON p.id = e.product_pk WHERE p.product_id = 'p0'"
            )
        ).one()
    assert len(code) == DIM
    assert code == "".join("1" if x > 0 else "0" for x in vectors[0])
    with catalog.engine.begin() as conn:  # a new vector: a new code (a generated column)
        conn.execute(
            text("UPDATE imgsearch.embeddings SET embedding = CAST(:v AS halfvec) WHERE image_id = :i"),
            {"v": str((-vectors[0]).tolist()), "i": image_id},
        )
        flipped = conn.execute(
            text("SELECT code::text FROM imgsearch.embeddings WHERE image_id = :i"), {"i": image_id}
        ).scalar_one()
    assert flipped == "".join("1" if x < 0 else "0" for x in vectors[0])


def test_the_refresh_checks_a_models_codes_and_records_their_recall(
    shop: tuple[Catalog, np.ndarray, np.ndarray],
) -> None:
    catalog, vectors, _ = shop
    rows, recall = check_row(catalog)
    assert rows == len(vectors) and recall >= binary_codes.MIN_RECALL
    with catalog.engine.connect() as conn:
        assert binary_codes.usable(conn, catalog.active_model.id)
        conn.execute(text("SET ROLE imgsearch_app"))  # the searches' role reads it too
        assert binary_codes.usable(conn, catalog.active_model.id)
    url = make_url(catalog.engine.url.render_as_string(hide_password=False))
    with psycopg.connect(
        host=url.query["host"], user=url.username, dbname=url.database, autocommit=True
    ) as conn:
        assert binary_codes.check_if_due(conn, catalog.active_model) is None  # rows unchanged
        conn.execute("UPDATE imgsearch.binary_code_checks SET rows = rows / 3, recall = 0")
        again = binary_codes.check_if_due(conn, catalog.active_model)  # its rows tripled since
        assert again == pytest.approx(recall)
    assert check_row(catalog) == (rows, pytest.approx(recall))


def test_a_far_filter_past_min_rows_reads_the_codes_and_gets_the_exact_top_k(
    shop: tuple[Catalog, np.ndarray, np.ndarray],
) -> None:
    catalog, vectors, labels = shop
    for n, source in enumerate((3, 120, 2900)):
        q = vectors[source]
        far = far_from(vectors, labels, q, FAR_CLUSTERS)
        expected = exact_top(catalog, q, 10, category=far)
        hits, plans = searched(catalog, q, k=10, category=far)
        assert [p.strategy for p in plans] == ["codes"] and plans[0].matching == FAR_CLUSTERS * PER_CLUSTER
        assert hits == expected, n
        # a shop's search (row-level security), a price range, a page further on
        hits, plans = searched(catalog, q, k=10, offset=5, tenant="acme", category=far, price_min=20)
        cheap = set(priced(catalog, far, 20))
        expected = [i for i in exact_top(catalog, q, 40, category=far) if i in cheap][5:15]
        assert [p.strategy for p in plans] == ["codes"] and hits == expected, n


def priced(catalog: Catalog, categories: list[str], least: int) -> list[int]:
    with catalog.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT image_id FROM imgsearch.embeddings WHERE category = ANY(:c) AND price >= :p"),
                {"c": categories, "p": least},
            ).scalars()
        )


def test_below_min_rows_or_off_or_not_covered_far_filters_scan_exactly(
    shop: tuple[Catalog, np.ndarray, np.ndarray], database_url: str
) -> None:
    catalog, vectors, labels = shop
    q = vectors[3]
    # 1,200 rows: past an exact_max_rows of 500 (one pass first), under binary_codes.MIN_ROWS,
    # where the exact scan costs less than the codes' re-rank
    few = far_from(vectors, labels, q, 6)
    with Catalog.open(database_url, settings=Settings(**SETTINGS, exact_max_rows=500)) as lower:
        hits, plans = searched(lower, q, k=10, category=few)
    assert [(p.strategy, p.matching) for p in plans] == [("exact", 1200)]
    assert hits == exact_top(catalog, q, 10, category=few)
    # 1,600 rows: past the default exact_max_rows and MIN_ROWS both: the codes
    some = far_from(vectors, labels, q, 8)
    hits, plans = searched(catalog, q, k=10, category=some)
    assert [(p.strategy, p.matching) for p in plans] == [("codes", 1600)]
    assert hits == exact_top(catalog, q, 10, category=some)
    far = far_from(vectors, labels, q, FAR_CLUSTERS)
    hits, plans = searched(catalog, q, k=10, category=far, brand="none")  # a products' column
    assert [p.strategy for p in plans] == ["exact"] and hits == []
    assert not codes_cover(Filters(category=far, brand="x"))
    assert codes_cover(Filters(category=far, tenant="a")) and codes_cover(Filters(tenant="a", price_min=3))
    # a price range alone: no tenant nor category leads the codes' index (it would read the table)
    assert not codes_cover(Filters(price_min=3, price_max=9))
    assert not codes_cover(Filters(exclude_image=1))  # "more like this" over the whole catalog
    with Catalog.open(database_url, settings=Settings(**SETTINGS, binary_codes=False)) as off:
        hits, plans = searched(off, q, k=10, category=far)
    assert [p.strategy for p in plans] == ["exact"] and hits == exact_top(catalog, q, 10, category=far)
    with catalog.engine.begin() as conn:  # a check below MIN_RECALL: not used (read again with the graphs)
        conn.execute(text("UPDATE imgsearch.binary_code_checks SET recall = 0.9"))
    catalog._searcher.router.forget_graphs()
    hits, plans = searched(catalog, q, k=10, category=far)
    assert [p.strategy for p in plans] == ["exact"] and hits == exact_top(catalog, q, 10, category=far)


def test_the_codes_come_from_an_index_only_scan(shop: tuple[Catalog, np.ndarray, np.ndarray]) -> None:
    catalog, vectors, labels = shop
    q = vectors[3]
    far = far_from(vectors, labels, q, FAR_CLUSTERS)
    for filters in (Filters(category=far), Filters(tenant="acme", category=far, price_min=20)):
        stmt = filtered_statement(
            catalog.active_model, q, filters, 10, 0,
            exact_max_rows=1500, exact_max_fraction=0.5, one_pass=True, with_embeddings=False, codes=True,
        )  # fmt: skip
        with catalog.engine.connect() as conn:
            plan = explain(conn, stmt, "ANALYZE, COSTS OFF")
        pool = code_pool(plan)
        assert "Index Only Scan using embeddings_tenant_category_price_idx" in pool, plan
        assert "Heap Fetches: 0" in pool and "rows=400" in pool, plan
        with (
            catalog.engine.connect() as conn
        ):  # the plan a search caches: the same scan, the query's code once
            generic = code_pool(explain_generic(conn, stmt))
        assert "Index Only Scan using embeddings_tenant_category_price_idx" in generic, generic
        assert "<~> (InitPlan" in generic and "binary_quantize" not in generic, generic


def code_pool(plan: str) -> str:
    """The lines of the plan's ``code_pool`` CTE (those below it, more indented)."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "CTE code_pool")
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return "\n".join(body)


def test_isotropic_noise_fails_the_check_and_keeps_exact_scans(database_url: str) -> None:
    """Sign bits of vectors with no strong direction lose the neighbours: the check refuses them."""
    vectors = isotropic_noise(seed=2, n=6000)
    labels = np.arange(len(vectors)) % CLUSTERS  # (searches that then keep exact scans: the test above)
    with Catalog.open(database_url, settings=Settings(**SETTINGS)) as catalog:
        add(catalog, vectors, labels)
        rows, recall = check_row(catalog)
        assert rows == len(vectors) and recall < binary_codes.MIN_RECALL
        with catalog.engine.connect() as conn:
            assert not binary_codes.usable(conn, catalog.active_model.id)
    assert Embedding.code.type.varying  # the model's column: any model's dimension


def test_the_cli_shows_the_check_and_a_refresh_makes_it_again(
    shop: tuple[Catalog, np.ndarray, np.ndarray], database_url: str
) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": "google/siglip-base-patch16-224"}
    listed = run_cli("index", "list", **env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(
        r"binary codes: recall@10 1\.000 over 8000 rows, checked .*; far filters read them", listed.stdout
    )
    catalog, _, _ = shop
    with catalog.engine.begin() as conn:  # as if the rows had tripled since: due again
        conn.execute(text("UPDATE imgsearch.binary_code_checks SET rows = 2000, recall = 0.5"))
    assert "below 0.98: far filters scan exactly" in run_cli("index", "list", **env).stdout
    refreshed = run_cli("index", "refresh", **env)
    assert refreshed.returncode == 0, refreshed.stderr
    assert "binary codes: recall@10 1.000 over 8000 rows" in refreshed.stdout
    assert "binary codes" not in run_cli("index", "refresh", **env).stdout  # not due: not checked again


def test_boosts_blend_into_the_codes_hits(shop: tuple[Catalog, np.ndarray, np.ndarray]) -> None:
    """The codes' part runs under the boosts' ranking as the exact part does: a product's boost
    lifts its row up the page, the rest keep their order."""
    catalog, vectors, labels = shop
    q = vectors[3]
    far = far_from(vectors, labels, q, FAR_CLUSTERS)
    expected = exact_top(catalog, q, 10, category=far)
    with catalog.engine.begin() as conn:  # the product of the 8th hit, boosted across queries
        conn.execute(
            text(
                "INSERT INTO imgsearch.boosts (product_pk, query_norm, tenant, product_id, boost, clicks, "
                "conversions, expected) SELECT p.id, '', p.tenant, p.product_id, 1.0, 50, 0, 10 "
                "FROM imgsearch.products p JOIN imgsearch.embeddings e ON e.product_pk = p.id WHERE e.image_id = :i"
            ),
            {"i": expected[7]},
        )
    model = catalog.active_model
    for codes in (True, False):
        with catalog.engine.begin() as conn:
            result = search_vector(
                conn,
                model,
                q,
                Filters(category=far),
                10,
                codes=codes,
                boosting=Boosting(None, lift=3, product_weight=1.0),
                exact_max_fraction=SETTINGS["exact_max_fraction"],
            )
        assert result.plan.strategy == ("codes" if codes else "exact")
        assert [h.image_id for h in result.hits] == [
            *expected[:4],
            expected[7],
            *expected[4:7],
            *expected[8:],
        ]


def test_right_after_a_first_upload_the_codes_give_the_exact_top_k(database_url: str) -> None:
    """Rows added by ``add_many``, no ANALYZE nor VACUUM of ours after them (statistics and the
    pages' all-visible marks only as autovacuum leaves them: the codes' scan may read the table
    too), then the workers' sweep's refresh: far filters take the codes with the exact hits."""
    vectors, labels = embeddings_like_real_ones(seed=9)
    keep = labels < 32  # 6,400 rows: the bound at 0.5 is 3,200, past binary_codes.MIN_ROWS
    vectors, labels = vectors[keep], labels[keep]
    with Catalog.open(database_url, settings=Settings(**SETTINGS)) as catalog:
        catalog.add_many(
            {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": f"c{int(c):02d}"}
            for i, (v, c) in enumerate(zip(vectors, labels, strict=True))
        )
        filter_indexes.refresh(catalog.engine, catalog.active_model)  # the sweep's
        with catalog.engine.connect() as conn:
            assert binary_codes.usable(conn, catalog.active_model.id)
        catalog._searcher.router.forget_graphs()
        q = vectors[3]
        mean = np.array([vectors[labels == c].mean(axis=0) @ q for c in range(32)])
        far = [f"c{int(c):02d}" for c in np.argsort(mean)[:16]]  # 3,200 rows
        hits, plans = searched(catalog, q, k=10, category=far)
        assert [p.strategy for p in plans] == ["codes"], plans
        assert hits == exact_top(catalog, q, 10, category=far)
