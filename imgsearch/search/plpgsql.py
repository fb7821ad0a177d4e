"""The library's statements as PL/pgSQL runs them: compiled for the SQL console's filters, with
``$n`` for the function's values and ``format()``'s ``%1$s`` and ``%2$s`` for the model's id and
dimension (:mod:`imgsearch.search.console` writes the console functions with them).

The console's filters are every filter it takes, each condition true when its value is NULL
(``$4 IS NULL OR e.tenant = $4``): PL/pgSQL's ``EXECUTE`` plans a statement for its values, so
a NULL filter's condition folds away, and the plan is the one the library's statement of that
shape gets. The model's id and dimension are known only when the function runs, and the planner
needs both as constants (the partial HNSW index is the model's, its expression
``embedding::halfvec(dim)``): they are written into the text by ``format()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import BindParameter, ColumnElement, or_
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import PGCompiler, PGTypeCompiler
from sqlalchemy.sql.elements import BinaryExpression

from imgsearch.records import ModelInfo
from imgsearch.search.filters import Filters

# stand-ins for the model's id and dimension, compiled as format()'s %1$s and %2$s
_MODEL_ID, _DIM = -7_340_033, 16_001
MODEL = ModelInfo(id=_MODEL_ID, name="console", dim=_DIM, active=True)


@dataclass(frozen=True)
class ConsoleFilters(Filters):
    """Every console filter, each condition ``value IS NULL OR condition`` (see the module)."""

    def value_conditions(self, rows: Any) -> list[ColumnElement[bool]]:
        return [_optional(c) for c in super().value_conditions(rows)]

    def row_conditions(self) -> list[ColumnElement[bool]]:
        return [_optional(c) for c in super().row_conditions()]

    def tenant_is(self, table: Any) -> list[ColumnElement[bool]]:
        return [_optional(c) for c in super().tenant_is(table)]


def _optional(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """``value IS NULL OR condition`` for a condition comparing a column with a value (once)."""
    if isinstance(condition, BinaryExpression) and isinstance(condition.right, BindParameter):
        return or_(condition.right.is_(None), condition)
    return condition


def console_filters(tenant: bool = True) -> ConsoleFilters:
    """The console's filters: a tenant, a category, a price range, an excluded image or product.
    Their values here only make every condition (the statements bind the function's own);
    ``sharded``: products are joined in the rows' tenant too, as Citus needs (the shard key).
    ``tenant=False``: for a statement that searches every shop."""
    return ConsoleFilters(
        tenant="t" if tenant else None, category="c", price_min=0, price_max=1, exclude_image=1,
        exclude_product=1, sharded=True,
    )  # fmt: skip


class _Types(PGTypeCompiler):
    def visit_user_defined(self, type_: Any, **kw: Any) -> str:
        if isinstance(type_, HALFVEC) and type_.dim == _DIM:
            return "halfvec(%2$s)"
        return str(super().visit_user_defined(type_, **kw))


class _Compiler(PGCompiler):
    positions: ClassVar[dict[str, int]] = {}

    def visit_bindparam(self, bindparam: BindParameter[Any], **kw: Any) -> str:  # type: ignore[override]
        if bindparam.key in self.positions:
            return f"${self.positions[bindparam.key]}"
        if bindparam.value == _MODEL_ID:
            return "%1$s"
        if bindparam.unique:  # a constant of the library's statement
            return str(self.render_literal_bindparam(bindparam, **kw))  # type: ignore[no-untyped-call]
        raise ValueError(f"the console has no value for the parameter {bindparam.key!r}")


def sql(stmt: Any, parameters: dict[str, str]) -> str:
    """``stmt``'s text for PL/pgSQL's ``format()`` then ``EXECUTE ... USING``: ``parameters``
    maps the library's parameter names to the function's values, in the USING order (``$1``,
    ``$2``, ...); every other parameter must be a constant of the statement."""
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    positions = {name: i for i, name in enumerate(parameters, 1)}
    dialect.statement_compiler = type("Compiler", (_Compiler,), {"positions": positions})
    dialect.type_compiler_instance = _Types(dialect)
    # without the compiler's spaces at the ends of lines
    text = "\n".join(line.rstrip() for line in str(stmt.compile(dialect=dialect)).splitlines())
    if text.replace("%1$s", "").replace("%2$s", "").count("%"):
        raise ValueError("a statement's text holds a % that format() would read")
    if "$sql$" in text:
        raise ValueError("a statement's text holds the quote $sql$")
    return text


def using(parameters: dict[str, str]) -> str:
    """The USING list of a statement compiled with ``parameters``."""
    return ", ".join(parameters.values())
