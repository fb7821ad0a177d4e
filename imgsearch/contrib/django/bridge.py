"""Running imgsearch's SQLAlchemy code on Django's own database connection.

Searches must run on the connection (and inside the transaction) of the Django request: in a
``TestCase``, or after the app wrote rows it hasn't committed, another connection would not see
them, and ``SET LOCAL`` only means something inside the query's own transaction. So the engine
here borrows Django's psycopg connection of the current thread instead of opening its own;
transactions stay Django's (``transaction.atomic``), and SQLAlchemy's commit, rollback and close
are left to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings as django_settings
from django.db import connections, transaction
from sqlalchemy import BigInteger, ColumnElement, Engine, column, create_engine, select, text
from sqlalchemy.pool import NullPool

from imgsearch.catalog import Catalog
from imgsearch.db import vector_index
from imgsearch.db.models import Embedding
from imgsearch.embed.model import Embedder
from imgsearch.embed.registry import canonical_name, model_dim
from imgsearch.errors import ConfigurationError
from imgsearch.settings import Settings

_engines: dict[str, Engine] = {}
_embedders: dict[str, Embedder] = {}
_lock = threading.Lock()


class _Borrowed:
    """Django's psycopg connection, lent to SQLAlchemy: everything passes through except ending the
    transaction or the connection, which stay Django's business."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def engine(using: str = "default") -> Engine:
    """A SQLAlchemy engine whose connections are the current thread's Django connection ``using``."""
    with _lock:
        if using not in _engines:
            vendor = connections[using].vendor
            if vendor != "postgresql":
                raise ConfigurationError(f"imgsearch needs PostgreSQL; database {using!r} is {vendor}")

            def borrow() -> _Borrowed:
                django_connection = connections[using]
                django_connection.ensure_connection()
                return _Borrowed(django_connection.connection)

            _engines[using] = create_engine(
                "postgresql+psycopg://",
                creator=borrow,
                poolclass=NullPool,
                pool_reset_on_return=None,
                use_native_hstore=False,  # its type lookup wants a real psycopg Connection
            )
        return _engines[using]


def settings() -> Settings:
    """imgsearch settings from ``settings.IMGSEARCH`` (keys as in ``IMGSEARCH_<NAME>``), then the
    environment."""
    given = getattr(django_settings, "IMGSEARCH", {}) or {}
    # a search's record is written on its own thread's connection (Django's are per thread)
    return Settings(**{"record_in_background": False, **{str(key).lower(): value for key, value in given.items()}})


@contextmanager
def catalog(using: str = "default", *, rollback: bool = False) -> Iterator[Catalog]:
    """A :class:`Catalog` on Django's connection, inside ``transaction.atomic(using)`` (a savepoint
    when a transaction is open). ``rollback`` undoes the block afterwards: searches use it so their
    ``SET LOCAL`` settings and tenant role end with them instead of leaking into the caller's
    transaction."""
    current = settings()
    eng = engine(using)
    with transaction.atomic(using=using):
        with eng.connect() as conn:
            model = vector_index.active_model(conn)
            if model is None:
                name = canonical_name(current.model)
                model = vector_index.register_model(conn, name, model_dim(name), activate=True)
        with _lock:
            embedder = _embedders.setdefault(model.name, Embedder.from_settings(current, name=model.name))
        yield Catalog(eng, model, current, embedder=embedder)  # weights load once per process, on first use
        if rollback:
            transaction.set_rollback(True, using=using)
        else:  # writes stay; the tenant role and setting they ran under end here
            with eng.connect() as conn:
                conn.exec_driver_sql("RESET ROLE")
                conn.execute(text("SELECT set_config('imgsearch.tenant', '', true)"))


def subquery_ids(queryset: Any) -> ColumnElement[bool]:
    """``embeddings.image_id IN (<the QuerySet's ids>)``: a Django QuerySet over images as a
    condition imgsearch's search statement can take, its values still bound parameters."""
    compiler = queryset.values("pk").query.get_compiler(using=queryset.db)
    sql, params = compiler.as_sql()
    pieces = sql.replace("%%", "%").split("%s")
    if len(pieces) != len(params) + 1:
        raise ConfigurationError("cannot use this QuerySet's SQL as a search filter")
    names = [f"django_p{i}" for i in range(len(params))]
    # a space after each name: a "::" cast right after a bind would hide it from SQLAlchemy
    rendered = pieces[0] + "".join(f":{name} {piece}" for name, piece in zip(names, pieces[1:], strict=True))
    ids = text(rendered).bindparams(**dict(zip(names, params, strict=True))).columns(column("pk", BigInteger))
    return Embedding.image_id.in_(select(ids.subquery().c.pk))
