"""The console's search functions written from the library's statements.

Every console search by vector (``imgsearch.search_vector``, ``search_similar``,
``search_similar_product``, ``search_text``, the semantic side of ``search_hybrid``) runs
``imgsearch._search``; the console's lexical side runs ``imgsearch._lexical`` (``search_hybrid``)
and its counts ``imgsearch.facets``. Their statements are the library's own, compiled for the
console's filters (:mod:`imgsearch.search.plpgsql`):

* ``_search``: :func:`statements.filtered_statement` (the count, the one HNSW pass and the exact
  scan, chosen inside PostgreSQL; with the binary codes' part where the model's codes passed
  their check, ``imgsearch._binary_codes_on``), :func:`statements.hnsw_statement`,
  :func:`statements.pooled_statement` and :func:`statements.exact_statement`, with the numbers of
  :mod:`imgsearch.search.plans` (thresholds, ``ef_search``, pools, the planner's settings), run in
  the order of :func:`imgsearch.search.strategy.search_vector`;
* ``_lexical``: :func:`lexical.lexical_ranked`, over the matches ``imgsearch.lexical_match``
  gives (the function the library's lexical side calls too);
* ``facets``: :func:`facets.statement`, its counts reshaped into the console's jsonb.

What PL/pgSQL adds is the order of the statements, the checks of the arguments and the settings'
calls. The functions' files (``imgsearch/db/sql/functions/``) are this module's output, and
``tests/search/test_console.py`` holds them equal: after a change to a statement or a plan,
``python -m imgsearch.search.console --write`` writes them, and a migration ships them whole
(docs/architecture.md, "Where a console function lives").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, bindparam, select

from imgsearch.db.vector_index import query_param
from imgsearch.ingest import checks
from imgsearch.search import boosting, facets, hybrid, lexical, plans, request, statements
from imgsearch.search import console_sql as sql_text
from imgsearch.search.filters import MAX_K, PARAM_PREFIX
from imgsearch.search.plpgsql import MODEL, console_filters, sql, using
from imgsearch.settings import REGION_MARGIN

FOLDER = Path(__file__).parent.parent / "db" / "sql" / "functions"

# each function's values by the library's parameter names, in the order of its EXECUTEs' USING
# (their $1, $2, ...)
QUERY, K, POOL = "imgsearch_console_query", "imgsearch_console_k", "imgsearch_console_pool"
FILTERS = {
    f"{PARAM_PREFIX}tenant": "tenant",
    f"{PARAM_PREFIX}category": "category",
    f"{PARAM_PREFIX}price_min": "units_min",
    f"{PARAM_PREFIX}price_max": "units_max",
    f"{PARAM_PREFIX}exclude_image": "exclude",
    f"{PARAM_PREFIX}exclude_product": "exclude_product",
}
SEARCH = {
    QUERY: "query",
    K: "rows_k",  # k, or a pool of rows where images have regions
    POOL: "pool",
    **FILTERS,
    statements.TOTAL_PARAM: "total",
    statements.BOUND_PARAM: "bound",
}
# the text's matches, read first from imgsearch.lexical_match (lexical.MATCH_ARRAYS)
MATCHES = dict(
    zip(
        (name for name, _ in lexical.MATCH_ARRAYS),
        ("m_pks", "m_exact", "m_ranks", "m_similarities"),
        strict=True,
    )
)
LEXICAL = {K: "n", **FILTERS, f"{PARAM_PREFIX}tenant": "shop", **MATCHES}
FACETS = {**FILTERS, f"{PARAM_PREFIX}tenant": "shop", **MATCHES}
N = "imgsearch_console_n"
_FUSION = hybrid.Fusion()
HYBRID = {
    hybrid.QUERY_PARAM: "qv",
    K: "k",
    N: "n",
    **FACETS,
    **dict(zip(lexical.SEMANTIC_PARAMS, ("s_tenants", "s_products", "s_images"), strict=True)),
    "imgsearch_rrf_k": "rrf_k",
    "imgsearch_w_semantic": f"{float(_FUSION.semantic)}::double precision",
    "imgsearch_w_lexical": f"{float(_FUSION.lexical)}::double precision",
    boosting.QUERY: "norm",
    boosting.LIFT: "lift::double precision",
    boosting.PRODUCT_WEIGHT: "weight",
}


def search_texts() -> dict[str, str]:
    """``_search``'s statements by name."""
    q = query_param(None, MODEL.dim, name=QUERY)
    k, pool = bindparam(K, type_=Integer()), bindparam(POOL, type_=Integer())
    filters = replace(console_filters(), region_rows=True)  # every row, with its box

    # sized: the row estimate and the bound as values (a Citus coordinator's statement takes no
    # subquery in a LIMIT), as the library's on Citus
    def filtered(one_pass: bool, codes: bool = False) -> Any:
        return statements.filtered_statement(
            MODEL, q, filters, k, 0, exact_max_rows=plans.EXACT_MAX_ROWS,
            exact_max_fraction=plans.EXACT_MAX_FRACTION, one_pass=one_pass, with_embeddings=False, sized=True,
            codes=codes,
        )  # fmt: skip

    total = bindparam(statements.TOTAL_PARAM, type_=Integer())
    bound = statements.exact_bound(total, k, plans.EXACT_MAX_ROWS, plans.EXACT_MAX_FRACTION)
    built: dict[str, Any] = {
        "total": select(plans.reltuples()),
        "bound": select(bound),
        "one_pass": statements.hnsw_statement(MODEL, q, filters, k),
        "filtered": filtered(True),
        "filtered_exact": filtered(False),
        "filtered_codes": filtered(True, codes=True),
        "pooled": statements.pooled_statement(MODEL, q, filters, pool, k, 0, False),
        "exact": statements.exact_statement(MODEL, q, filters, k),
    }
    return {name: sql(stmt, SEARCH) for name, stmt in built.items()}


def lexical_texts() -> dict[str, str]:
    """``_lexical``'s statement."""
    n = bindparam(K, type_=Integer())
    return {"ranked": sql(lexical.lexical_ranked(MODEL, console_filters(), n, fetched=True), LEXICAL)}


def hybrid_texts() -> dict[str, str]:
    """``search_hybrid``'s fusion: a shop's (each product's best image by a lateral LIMIT) and
    every shop's (by DISTINCT ON, the boosts joined), each boosted or not."""
    q = query_param(None, MODEL.dim, name=hybrid.QUERY_PARAM)
    k, n = bindparam(K, type_=Integer()), bindparam(N, type_=Integer())
    texts = {}
    for name, filters in [("fused", console_filters()), ("fused_everywhere", console_filters(tenant=False))]:
        for boosted in (False, True):
            stmt = lexical.fused_statement(
                MODEL, q, filters, n, k, 0, hybrid=True, boosted=boosted, fetched=True
            )
            texts[f"{name}_boosted" if boosted else name] = sql(stmt, HYBRID)
    return texts


def facets_texts() -> dict[str, str]:
    """``facets``' statements: of the whole match set, and of a text's."""
    filters = console_filters()
    return {
        "every": sql(facets.statement(MODEL, filters, False), FACETS),
        "matching": sql(facets.statement(MODEL, filters, True, fetched=True), FACETS),
    }


def _settings() -> str:
    """The function's SET clauses: the planner's settings and pgvector's defaults, as
    ``pg_get_functiondef`` prints them."""
    defaults = {
        '"hnsw.ef_search"': plans.MIN_EF_SEARCH,
        '"hnsw.iterative_scan"': "off",
        '"hnsw.max_scan_tuples"': plans.MIN_SCAN_TUPLES,
        '"hnsw.scan_mem_multiplier"': plans.SCAN_MEM_MULTIPLIER,
        **plans.PLANNER_SETTINGS,
        # the filtered statement's exact part is planned for every matching row, run only when
        # its gate holds: planned parallel, its workers start even when it doesn't (5 ms a search
        # for a shop's whole catalog, bench/search/console.py); the library's plans for such
        # shapes are cached, planned without the values
        "max_parallel_workers_per_gather": 0,
    }
    return "".join(f" SET {name} TO '{value}'\n" for name, value in defaults.items())


def files() -> dict[str, str]:
    """The console functions written here, by file name (in ``imgsearch/db/sql/functions/``)."""
    units = sql_text.UNITS.format(limit=int(checks.PRICE_LIMIT))
    search = sql_text.SEARCH_BODY.format(
        units=units,
        max_k=MAX_K,
        min_ef=plans.MIN_EF_SEARCH,
        max_ef=plans.MAX_EF_SEARCH,
        ef_base_rows=plans.EF_BASE_ROWS,
        ef_growth=plans.EF_GROWTH,
        min_scan_tuples=plans.MIN_SCAN_TUPLES,
        max_scan_tuples=plans.MAX_SCAN_TUPLES,
        min_pool=plans.MIN_POOL,
        max_pool=plans.MAX_POOL,
        scan_mem_multiplier=plans.SCAN_MEM_MULTIPLIER,
        margin=REGION_MARGIN,
        min_rows=request.MIN_POOL,
        max_rows=request.MAX_POOL,
        using=using(SEARCH),
        **search_texts(),
    )
    lexical_body = sql_text.LEXICAL.format(
        units=units, matches=sql_text.MATCHES_INTO, using=using(LEXICAL), **lexical_texts()
    )
    facets_body = sql_text.FACETS.format(
        units=units,
        matches=sql_text.MATCHES_INTO.replace("\n", "\n    "),
        using=using(FACETS),
        **facets_texts(),
    )
    hybrid_body = sql_text.HYBRID.format(
        units=units,
        matches=sql_text.MATCHES_INTO,
        using=using(HYBRID),
        max_k=MAX_K,
        min_candidates=hybrid.MIN_CANDIDATES,
        max_candidates=hybrid.MAX_CANDIDATES,
        **hybrid_texts(),
    )
    return {
        "_search.sql": sql_text.SEARCH_HEAD + _settings() + search,
        "_lexical.sql": lexical_body,
        "facets.sql": facets_body,
        "search_hybrid.sql": hybrid_body,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgsearch.search.console",
        description="Write the console's search functions from the library's statements; exit 1 where a file differs.",
    )
    parser.add_argument("--write", action="store_true", help="write the files")
    args = parser.parse_args(argv)
    differ = []
    for name, text in files().items():
        path = FOLDER / name
        if args.write:
            path.write_text(text)
        elif path.read_text() != text:
            differ.append(name)
    for name in differ:
        print(f"{FOLDER / name} differs from the library's statements (--write writes it)", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
