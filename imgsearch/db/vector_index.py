"""Per-model embedding registration and HNSW indexes.

All models share ``imgsearch.embeddings``, whose column has no fixed dimension. Each model gets a
partial expression index, the pattern pgvector documents for mixed dimensions::

    CREATE INDEX embeddings_hnsw_m1 ON imgsearch.embeddings
        USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops) WHERE model_id = 1

A query uses it when it orders by ``embedding::halfvec(768) <=> q`` with ``model_id = 1`` written
as a literal (see :func:`model_filter`); the index expression also makes PostgreSQL reject a
vector of the wrong dimension for that model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    bindparam,
    cast,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.types import UserDefinedType

from imgsearch.db.models import SCHEMA, Embedding, Model
from imgsearch.errors import InvalidInput
from imgsearch.records import ModelInfo

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
REGISTER_LOCK = 0x696D6774


def index_name(model_id: int) -> str:
    return f"embeddings_hnsw_m{int(model_id)}"


def create_index(conn: Connection, model_id: int, dim: int) -> None:
    """Create the model's HNSW index if missing (ids and dims are integers from our own table)."""
    model_id, dim = int(model_id), int(dim)
    if not 1 <= dim <= 4000:
        raise InvalidInput(f"dimension {dim} is outside 1..4000 (pgvector's halfvec HNSW limit)")
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {index_name(model_id)} ON {SCHEMA}.embeddings "
            f"USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE model_id = {model_id}"
        )
    )


def drop_index(conn: Connection, model_id: int) -> None:
    conn.execute(text(f"DROP INDEX IF EXISTS {SCHEMA}.{index_name(int(model_id))}"))


def register_model(conn: Connection, name: str, dim: int, *, activate: bool = False) -> ModelInfo:
    """Add ``name`` to the models table (idempotent) with its index; optionally make it active."""
    # concurrent first opens of one catalog serialise here instead of racing on the unique name
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTER_LOCK})
    found = conn.execute(select(Model.id, Model.dim).where(Model.name == name)).first()
    if found is None:
        model_id = conn.execute(insert(Model).values(name=name, dim=dim).returning(Model.id)).scalar_one()
    elif found.dim != dim:
        raise InvalidInput(f"model {name!r} is registered with dimension {found.dim}, not {dim}")
    else:
        model_id = found.id
    create_index(conn, model_id, dim)
    if activate:
        conn.execute(update(Model).where(Model.active).values(active=False))
        conn.execute(update(Model).where(Model.id == model_id).values(active=True))
    return _model(conn, model_id)


def _model(conn: Connection, model_id: int) -> ModelInfo:
    row = conn.execute(
        select(Model.id, Model.name, Model.dim, Model.active).where(Model.id == model_id)
    ).one()
    return ModelInfo(id=row.id, name=row.name, dim=row.dim, active=row.active)


def get_model(conn: Connection, name: str) -> ModelInfo | None:
    row = conn.execute(select(Model.id).where(Model.name == name)).first()
    return None if row is None else _model(conn, row.id)


def active_model(conn: Connection) -> ModelInfo | None:
    row = conn.execute(select(Model.id).where(Model.active)).first()
    return None if row is None else _model(conn, row.id)


def model_filter(model_id: int) -> ColumnElement[bool]:
    """``embeddings.model_id = <id>`` with the id inlined, so the planner can use the partial index."""
    return Embedding.model_id == literal(int(model_id), literal_execute=True)


def embedding_expr(dim: int) -> ColumnElement[Any]:
    """The indexed expression ``embedding::halfvec(dim)``."""
    return cast(Embedding.embedding, HALFVEC(int(dim)))


class QueryHalfvec(UserDefinedType[Any]):
    """A query vector bound as halfvec text, written ~4x faster than pgvector's generic writer:
    rounded to float16 first (what halfvec stores) and printed with the 5 significant digits
    that give back the same float16, so the server reads the very value an exact scan uses."""

    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)

    def get_col_spec(self, **kw: Any) -> str:
        return f"HALFVEC({self.dim})"

    def bind_processor(self, dialect: Any) -> Callable[[Any], str]:
        return halfvec_text


def halfvec_text(value: Any) -> str:
    """``[v1,v2,...]`` for a sequence of numbers, as halfvec reads it back exactly."""
    values = np.asarray(value, dtype=np.float16).astype(np.float32).tolist()
    return "[" + ",".join(map("{:.5g}".format, values)) + "]"


def query_param(query: Any, dim: int, name: str | None = None) -> BindParameter[Any]:
    """The query vector as one bound parameter (a statement that uses it twice sends it once);
    ``name`` makes it a named parameter whose value an execution can supply."""
    if isinstance(query, BindParameter):
        return query
    return bindparam(name or "query_vector", query, type_=QueryHalfvec(dim), unique=name is None)
