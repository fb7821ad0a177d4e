"""What a search restricts its rows to: the filters, checked, as bound SQL conditions; and a page's
``k`` and ``offset``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Text,
    and_,
    any_,
    bindparam,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeDecorator

from imgsearch.db.models import Embedding, Product
from imgsearch.errors import InvalidQuery
from imgsearch.ingest import checks

MAX_K = 1000


@dataclass(frozen=True)
class Filters:
    """What a search restricts its rows to; every field is optional."""

    tenant: str | None = None
    category: str | Sequence[str] | None = None
    price_min: Any = None
    price_max: Any = None
    attributes: dict[str, Any] | None = None
    where: ColumnElement[bool] | None = None
    exclude_image: int | None = None  # "more like this image": the source image itself
    exclude_product: int | None = None  # "more like this product": its images (products.id)
    brand: str | None = None  # the product's brand (migration 0020)
    # the catalog is distributed by tenant (a Citus coordinator, set by routing): joins name it
    sharded: bool = False
    # set by routing for a shop's attribute filter that few products match: their keys, which
    # stand for the attributes' condition, as PostgreSQL writes an array ('{4,17}'; sent back
    # as it came: imgsearch.search.shop_filters)
    products: str | None = None
    # set by routing where images may have region rows (imgsearch.work.regions): True, every row
    # (an image by its best, and hits carry their box); False, whole images' rows only; None: the
    # catalog has no regions
    region_rows: bool | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """The filters as SQL conditions; each value is a bound parameter named in :meth:`params`."""
        return list(self._conditions)

    def check(self) -> bool:
        """Check every value (:class:`InvalidQuery` naming the first bad one) without building
        the conditions (a search builds them only for a statement not built before); True when
        there is a condition."""
        return bool(self._values) or self.where is not None or self.region_rows is False

    def params(self) -> dict[str, Any]:
        """The filter values by parameter name, to run a statement built for the same
        :meth:`shape` with other values (checked once per instance); a price bound in
        ``price_units``."""
        return {
            f"{PARAM_PREFIX}{name}": self._units(name) if name in PRICE_BOUNDS else value
            for name, value in self._values.items()
        }

    def tenant_name(self) -> str | None:
        """The tenant as stored (:func:`imgsearch.ingest.checks.identifier`, checked once per instance)."""
        tenant: str | None = self._values.get("tenant")
        return tenant

    @property
    def on_products(self) -> bool:
        """Whether a condition reads ``products`` (attributes, unless :attr:`products` lists
        the products they match; brand): statements join it."""
        return (self.attributes is not None and self.products is None) or self.brand is not None

    def value(self, name: str) -> Any:
        """A filter's checked value by name (``tenant``, ``category``, ``categories``, ...), or None."""
        return self._values.get(name)

    def plans_alike(self, on_embeddings: bool = False) -> bool:
        """True when the best way to read every part of a search doesn't depend on the values:
        no filter, one filter on an indexed column (tenant, category or a list of them,
        attributes), or a shop's search, tenant and category (or a list), which one index
        serves; with or without ``exclude_image`` or ``exclude_product``. A statement of such a
        shape can run on a plan cached at its first runs. Other pairs of filters (which index
        leads depends on the values) are planned for each search.

        ``on_embeddings``: for a statement that reads the filters from embeddings alone (the
        vector statements), whose indexes also serve a price range alone, a category's (or a
        list's), and a shop's category's (:data:`PLANS_ALIKE_ON_EMBEDDINGS`); a statement over
        products (the lexical side) plans those for each search."""
        columns = frozenset(self._values) - {"exclude_image", "exclude_product"}
        shapes = PLANS_ALIKE_ON_EMBEDDINGS if on_embeddings else PLANS_ALIKE
        return self.where is None and columns in shapes

    def shape(self) -> tuple[Any, ...] | None:
        """What the statement for these filters looks like, apart from the values; None when
        ``where`` makes it unique."""
        if self.where is not None:
            return None
        values = self._values
        shape = (*values, "sharded") if self.sharded else tuple(values)
        return shape if self.region_rows is None else (*shape, f"regions {self.region_rows}")

    @cached_property
    def _values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.tenant is not None:
            values["tenant"] = checks.identifier(self.tenant, "tenant", InvalidQuery)
        if self.category is not None:
            if isinstance(self.category, list | tuple | set | frozenset):
                if not self.category:
                    raise InvalidQuery(
                        f"category must be a string or a non-empty list of strings, got {self.category!r}"
                    )
                categories = [checks.identifier(c, "category", InvalidQuery) for c in self.category]
            else:
                categories = [checks.identifier(self.category, "category", InvalidQuery)]
            values["categories" if len(categories) > 1 else "category"] = (
                categories if len(categories) > 1 else categories[0]
            )
        low, high = _price(self.price_min, "price_min"), _price(self.price_max, "price_max")
        if low is not None and high is not None and low > high:
            raise InvalidQuery(f"price_min {low} is above price_max {high}")
        # every stored price lies in [0, PRICE_LIMIT): a bound past that selects the same rows as
        # the limit does, and one past numeric's range would fail in the statement
        # and every stored price has four decimals: a bound rounded inwards to four selects the
        # same rows (and 1e-30000, which numeric can't hold, becomes 0)
        limit = checks.PRICE_LIMIT
        if low is not None:
            values["price_min"] = max(-limit, min(low, limit)).quantize(FOUR_PLACES, rounding=ROUND_CEILING)
        if high is not None:
            values["price_max"] = max(-limit, min(high, limit)).quantize(FOUR_PLACES, rounding=ROUND_FLOOR)
        if self.attributes is not None:
            values["attributes"] = checks.attributes(self.attributes, "attributes", InvalidQuery)
        if self.brand is not None:
            brand = checks.product_text(self.brand, "brand", InvalidQuery)
            if brand is None:
                raise InvalidQuery("brand must not be empty")
            values["brand"] = brand
        if self.exclude_image is not None:
            if not checks.stored_id(self.exclude_image):
                raise InvalidQuery(f"exclude_image must be an image id, got {self.exclude_image!r}")
            values["exclude_image"] = self.exclude_image
        if self.exclude_product is not None:
            if not checks.stored_id(self.exclude_product):
                raise InvalidQuery(f"exclude_product must be a product key, got {self.exclude_product!r}")
            values["exclude_product"] = self.exclude_product
        if self.products is not None:
            if not isinstance(self.products, str) or not KEYS_TEXT.fullmatch(self.products):
                raise InvalidQuery(
                    f"products must be an array of product keys such as '{{4,17}}', got {self.products!r:.80}"
                )
            values["products"] = self.products
        if self.where is not None and not isinstance(self.where, ColumnElement):
            raise InvalidQuery("where must be a SQLAlchemy expression over the imgsearch models")
        return values

    @cached_property
    def _conditions(self) -> list[ColumnElement[bool]]:
        return [*self.value_conditions(Embedding), *self.row_conditions()]

    def row_conditions(self) -> list[ColumnElement[bool]]:
        """The conditions only the search rows can answer: the exclusions and ``where``."""
        values = self._values
        conds: list[ColumnElement[bool]] = []
        if "exclude_image" in values:
            conds.append(Embedding.image_id != self._param("exclude_image", BigInteger()))
        if "exclude_product" in values:
            conds.append(Embedding.product_pk != self._param("exclude_product", BigInteger()))
        if self.where is not None:
            conds.append(self.where)
        if self.region_rows is False:
            conds.append(Embedding.region == 0)
        return conds

    def same_shop(self, table: Any, key: Any, rows_key: Any, rows_tenant: Any) -> ColumnElement[bool]:
        """The join of search rows to ``table`` (``Product``, ``Image``): its ``key`` equal to
        the rows'. On one node the key alone decides (a condition more may change the plan);
        ``sharded`` (Citus, tables distributed by tenant), also in the rows' tenant, to stay on one
        shard, and :meth:`routed`."""
        same: ColumnElement[bool] = key == rows_key
        return and_(same, table.tenant == rows_tenant, *self.routed(table)) if self.sharded else same

    def routed(self, table: Any) -> list[ColumnElement[bool]]:
        """``sharded``: :meth:`tenant_is` on a table the search reads besides the filtered rows
        (the tenant as a value lets Citus run the statement on the shop's node alone, whatever
        subqueries lie between); nothing on one node, where row-level security and the filtered
        rows already keep it to the shop."""
        return self.tenant_is(table) if self.sharded else []

    def tenant_is(self, table: Any) -> list[ColumnElement[bool]]:
        """``table.tenant`` equal to the filter's tenant; nothing without one."""
        return [table.tenant == self._param("tenant", Text())] if "tenant" in self._values else []

    def value_conditions(self, rows: Any) -> list[ColumnElement[bool]]:
        """The filters on values (tenant, category or a list, price, attributes, brand) as SQL
        conditions, tenant, category and price on ``rows``' columns: the search rows
        (``Embedding``, which carry their product's) or ``Product`` itself (totals and facets);
        attributes and brand on ``Product``. Each value is a bound parameter named in
        :meth:`params`."""
        values = self._values
        param = self._param
        conds = self.tenant_is(rows)
        if "category" in values:
            conds.append(rows.category == param("category", Text()))
        if "categories" in values:
            # one array parameter: the same SQL text (and prepared statement) for every list length
            conds.append(rows.category == any_(param("categories", ARRAY(Text()))))
        # on the bigint copy (migration 0030): a shop's range is an index condition under its
        # row-level security, where numeric's comparisons (not leakproof) can't be
        if "price_min" in values:
            conds.append(rows.price_units >= self._units_param("price_min"))
        if "price_max" in values:
            conds.append(rows.price_units <= self._units_param("price_max"))
        if "products" in values:
            # the products the attributes match, listed (imgsearch.search.shop_filters): bigint
            # equality, which an index serves under row-level security, where @> can't be
            keys = Product.id if rows is Product else rows.product_pk
            conds.append(keys == any_(param("products", KeysText())))
        elif "attributes" in values:
            conds.append(Product.attributes.op("@>")(param("attributes", JSONB())))
        if "brand" in values:
            conds.append(Product.brand == param("brand", Text()))
        return conds

    def _param(self, name: str, type_: Any) -> BindParameter[Any]:
        return bindparam(f"{PARAM_PREFIX}{name}", self._values[name], type_=type_)

    def _units_param(self, name: str) -> BindParameter[Any]:
        return bindparam(f"{PARAM_PREFIX}{name}", self._units(name), type_=BigInteger())

    def _units(self, name: str) -> int:
        """A price bound in ``price_units``: exact, the bound having four decimals at most
        (rounded inwards) and lying within numeric(14, 4)'s range (clamped)."""
        return int(self._values[name].scaleb(4))


class KeysText(TypeDecorator[str]):
    """``bigint[]`` in SQL, bound from its text form as it is (``'{4,17}'``: psycopg sends a
    ``str`` untyped, and PostgreSQL reads it as the statement's ``bigint[]``): a list of 10,000
    keys costs no Python."""

    impl = ARRAY(BigInteger())
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


KEYS_TEXT = re.compile(r"\{(?:[0-9]+(?:,[0-9]+)*)?\}")
PARAM_PREFIX = "imgsearch_filter_"
FOUR_PLACES = Decimal("0.0001")
PRICE_BOUNDS = ("price_min", "price_max")

# the filter columns of Filters.plans_alike shapes: none, one indexed column, or a shop's category
# (embeddings (model_id, tenant, category, price_units), migrations 0005, 0029 and 0030)
PLANS_ALIKE = {
    frozenset(columns)
    for columns in (
        (),
        ("tenant",),
        ("category",),
        ("categories",),
        ("attributes",),
        ("tenant", "category"),
        ("tenant", "categories"),
    )
}
# and on embeddings, a price range (one bound or both) alone, in a category or a list of them, or
# in a shop's category or list: embeddings (model_id, price_units), (model_id, category,
# price_units) and (model_id, tenant, category, price_units) serve each alike (migrations 0029,
# 0030); a shop's price range without a category is still planned for each search (made without
# the values, its plan reads the catalog's price index and filters the shop's rows)
PRICES = [("price_min",), ("price_max",), ("price_min", "price_max")]
PLANS_ALIKE_ON_EMBEDDINGS = PLANS_ALIKE | {
    frozenset((*columns, *price))
    for columns in ((), ("category",), ("categories",), ("tenant", "category"), ("tenant", "categories"))
    for price in PRICES
}


def _price(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidQuery(f"{name} must be a number, got {type(value).__name__}")
    try:
        if isinstance(value, str) and "_" in value:  # Decimal takes "1_000"; JSON and SQL don't
            raise InvalidOperation
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidQuery(f"{name} must be a number, got {value!r}") from exc
    if not price.is_finite():
        raise InvalidQuery(f"{name} must be finite, got {value!r}")
    return price


def check_page(k: Any, offset: Any) -> tuple[int, int]:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidQuery(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 10 * MAX_K:
        raise InvalidQuery(f"offset must be an integer from 0 to {10 * MAX_K}, got {offset!r}")
    return k, offset
