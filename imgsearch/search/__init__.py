"""Search: from a query vector and filters to the right top-k, in one SQL statement where it can be.

The modules, in the order a search passes through them:

- :mod:`~imgsearch.search.service`: the arguments checked, then each step below in turn;
- :mod:`~imgsearch.search.understanding`: a text's words read as filters ("red shoes under $50");
- :mod:`~imgsearch.search.queries`: the query (text, image, a stored image or product, a vector) as
  a vector;
- :mod:`~imgsearch.search.routing`: which database answers (a replica or the primary), under which
  tenant, with which per-value graphs;
- :mod:`~imgsearch.search.hybrid` and :mod:`~imgsearch.search.lexical`: a text's modes, the
  products' words in SQL and their fusion with the semantic side;
- :mod:`~imgsearch.search.facets`: the total and the counts of the whole match set;
- :mod:`~imgsearch.search.request`: what users ask for on top of the top-k (best image per
  product, diversity, query expansion, a score cut-off), on candidate pools;
- :mod:`~imgsearch.search.strategy`: the top-k rows for a vector and filters, exact at any filter;
- :mod:`~imgsearch.search.filters`, :mod:`~imgsearch.search.plans` and
  :mod:`~imgsearch.search.statements`: the checked filters, the pgvector settings of each
  statement, and the SQL;
- :mod:`~imgsearch.search.rerank` and :mod:`~imgsearch.search.replicas`: the re-ranking of a pool and
  the hot standbys searches go to.

This package's names below are the building blocks that ORM code, benchmarks and tests compose;
applications call :meth:`imgsearch.Catalog.search`.
"""

from imgsearch.search.filters import MAX_K, Filters, check_page
from imgsearch.search.plans import (
    EXACT_MAX_FRACTION,
    EXACT_MAX_ROWS,
    MIN_EF_SEARCH,
    Plan,
    iterative_plan,
    min_ef_search,
    one_pass_plan,
    open_ended_plan,
    planner_settings,
    set_local,
)
from imgsearch.search.statements import (
    exact_statement,
    fetch_limit,
    fetch_size,
    filtered_statement,
    hnsw_statement,
    per_value_statement,
    pooled_statement,
)
from imgsearch.search.strategy import Result, search_vector

__all__ = [
    "EXACT_MAX_FRACTION",
    "EXACT_MAX_ROWS",
    "MAX_K",
    "MIN_EF_SEARCH",
    "Filters",
    "Plan",
    "Result",
    "check_page",
    "exact_statement",
    "fetch_limit",
    "fetch_size",
    "filtered_statement",
    "hnsw_statement",
    "iterative_plan",
    "min_ef_search",
    "one_pass_plan",
    "open_ended_plan",
    "per_value_statement",
    "planner_settings",
    "pooled_statement",
    "search_vector",
    "set_local",
]
