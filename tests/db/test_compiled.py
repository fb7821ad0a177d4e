"""imgsearch.db.compiled: a statement compiled once runs as SQLAlchemy would run it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Numeric,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError

from imgsearch.db.compiled import Compiled


def statement() -> Any:
    """Values of every kind a search binds: text, a text array, numeric, JSONB, bigint, a constant
    of the statement, and one written into its text (literal_execute, as the model's id is)."""
    n = func.generate_series(1, 5).table_valued("value").render_derived(name="n")
    return (
        select(
            n.c.value,
            (bindparam("tenant", type_=Text()) + literal("-") + n.c.value.cast(Text)).label("tag"),
            (n.c.value * bindparam("price", type_=Numeric())).label("price"),
            func.jsonb_build_object("v", n.c.value)
            .op("@>")(bindparam("attributes", type_=JSONB()))
            .label("has"),
        )
        .where(n.c.value.cast(Text) != func.all(bindparam("skip", type_=ARRAY(Text()))))
        .where(n.c.value <= bindparam("most", 4, type_=BigInteger(), literal_execute=True))
        .where(n.c.value >= literal(1))
        .order_by(n.c.value)
    )


@pytest.mark.parametrize(
    "values",
    [
        {"tenant": "acme", "price": Decimal("2.5"), "attributes": {"v": 2}, "skip": ["3"]},
        {"tenant": "o'brien; DROP TABLE x", "price": Decimal("0.0001"), "attributes": {}, "skip": []},
        {"tenant": "b", "price": None, "attributes": {"v": "2"}, "skip": ["1", "2", "4"]},
    ],
)
def test_a_compiled_statement_gives_the_rows_sqlalchemy_gives(
    database_url: str, values: dict[str, Any]
) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            stmt = statement()
            compiled = Compiled.of(stmt, conn.dialect)
            expected = conn.execute(stmt, values).all()
            got = compiled.run(conn, {**values, "unused": 1})  # names the statement lacks are ignored
            assert [tuple(r) for r in got] == [tuple(r) for r in expected] and expected
            assert [r.tag for r in got] == [r.tag for r in expected]  # rows by column name too
            assert (
                "n.value <= 4" in compiled.sql and "most" not in compiled.sql
            )  # the constant is in the text
    finally:
        engine.dispose()


def test_errors_and_events_stay_sqlalchemys(database_url: str) -> None:
    """A failing run raises SQLAlchemy's wrapped error (which the search's retry and replica
    handling read), and event listeners see the statement, as for any execution."""
    engine = create_engine(database_url)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, sql, *rest: seen.append(sql))
    try:
        with engine.connect() as conn:
            compiled = Compiled.of(text("SELECT 1 / :d AS q"), conn.dialect)
            assert compiled.run(conn, {"d": 2})[0].q == 0
            with pytest.raises(DBAPIError, match="division by zero"):
                compiled.run(conn, {"d": 0})
        assert seen == [compiled.sql, compiled.sql]
    finally:
        engine.dispose()
