"""A shop's attribute filter through the attributes' index.

A shop's search runs under its row-level security, where PostgreSQL lets an index serve a
condition only when its operator is ``LEAKPROOF``; jsonb's ``@>`` is not, so the filter
``attributes @> ...`` read every product of the shop and tested each (bench/search/shop_attributes.py).
Before such a search, :meth:`ShopFilters.resolved` asks ``imgsearch._shop_products`` (migration
0042: the GIN index read as the owner, for the caller's shop only) for the keys of the products
that match; when few enough do (:data:`LIST_FACTOR`), the search keeps the rows of those products
(``product_pk = ANY(...)``: bigint equality, an index condition under the policies), which stand
for the attributes' condition. A broad filter (more products match) is searched as before: its
rows lie among the nearest, where the HNSW pass finds them without a list; and for
:data:`BROAD_SECONDS` that filter of that shop goes straight there (finding it broad read
as many products).

One round trip more, for a shop's attribute filter only. The list is read in the search's
transaction, one statement before the search's own: a product whose attributes change in between
is judged by its attributes at the lookup. On a Citus coordinator a shop's search runs as before
(its statements run on the shop's worker; the lookup isn't sent there). The catalog's own search
(no shop, no policy) reads the GIN index itself.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

from sqlalchemy import Connection, Float, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from imgsearch.db.compiled import Compiled
from imgsearch.search.filters import Filters

# How many products a list may carry: LIST_FACTOR * sqrt(the catalog's products), within
# [LEAST_PRODUCTS, MOST_PRODUCTS]. Past it, searching without a list costs less: the search's
# first count of matching rows (imgsearch.search.statements) reads about 1,500 / selectivity of
# the shop's products before it stops, a list costs each matching product; bench/search/
# shop_attributes.py measured about 0.55 us a product read against 2.5 us a product listed, which
# cross near 18 * sqrt(products): 5,700 at 100k products (there 10% of them, 10,000, cost 29.8 ms
# listed against 13.3 ms not), 18,000 at 1M (1% of them, 10,000, cost 84 ms listed against 471).
# The catalog's products stand for the shop's: a small shop's list is short anyway.
LIST_FACTOR = 18.0
LEAST_PRODUCTS = 2_000  # a fresh catalog's products are not counted yet (reltuples -1)
MOST_PRODUCTS = 20_000  # a bigint each, sent back with the search
BROAD_SECONDS = 60.0  # how long a filter found broad skips the lookup
BROAD_KEPT = 1024  # broad filters remembered (the oldest forgotten first)

# the list as text: it goes back as it came (Filters.products), never parsed into Python
_LOOKUP = text(
    """
SELECT CAST(imgsearch._shop_products(
           :wanted, CAST(least(:most, greatest(:least, ceil(:factor * sqrt(greatest(c.reltuples, 0))))) AS integer)
       ) AS text)
  FROM pg_catalog.pg_class c
 WHERE c.oid = CAST('imgsearch.products' AS regclass)
"""
).bindparams(
    bindparam("wanted", type_=JSONB()),
    bindparam("most", type_=Integer()),
    bindparam("least", type_=Integer()),
    bindparam("factor", type_=Float()),
)


class ShopFilters:
    """One catalog's lookups of shops' attribute filters (a router's), with the broad ones it has
    found lately."""

    def __init__(self) -> None:
        self._broad: dict[tuple[str, str], float] = {}  # (shop, filter) -> when to look again
        self._lock = threading.Lock()

    def resolved(self, conn: Connection, filters: Filters) -> Filters:
        """``filters`` with :attr:`Filters.products` set to the keys of the shop's products whose
        attributes match, when it is a shop's attribute filter that few enough match
        (:data:`LIST_FACTOR`); else ``filters`` as they are. In ``conn``'s transaction, scoped to the shop
        (:func:`imgsearch.access.tenancy.scope`)."""
        wanted, shop = filters.value("attributes"), filters.tenant_name()
        if wanted is None or shop is None or filters.products is not None:
            return filters
        key = (shop, json.dumps(wanted, sort_keys=True))
        now = time.monotonic()
        if self._broad.get(key, now) > now:
            return filters
        values = {"wanted": wanted, "most": MOST_PRODUCTS, "least": LEAST_PRODUCTS, "factor": LIST_FACTOR}
        found = Compiled.once(_LOOKUP, conn).run(conn, values)[0][0]
        if found is not None:
            return replace(filters, products=found)
        with self._lock:
            if len(self._broad) >= BROAD_KEPT:
                del self._broad[min(self._broad, key=self._broad.__getitem__)]
            self._broad[key] = now + BROAD_SECONDS
        return filters
