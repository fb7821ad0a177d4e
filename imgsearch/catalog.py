"""The Catalog: the public entry point for storing and finding product images."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import OperationalError

from imgsearch import images, ingest, search, vectors
from imgsearch.db import engine as db_engine
from imgsearch.db import migrate, vector_index
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.embed.registry import model_dim
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, InvalidQuery, NotFound
from imgsearch.records import Hit, ImageRecord, ModelInfo
from imgsearch.settings import Settings

log = logging.getLogger(__name__)


class Catalog:
    """Product images, their embeddings and searches over them, in one PostgreSQL database.

    >>> with Catalog.open() as catalog:                      # doctest: +SKIP
    ...     image_id = catalog.add(image="shoe.jpg", tenant="acme", product_id="sku-1")
    ...     catalog.get(image_id).state
    'pending'
    """

    def __init__(self, engine: Engine, model: ModelInfo, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._model = model
        self._limits = images.Limits(settings.max_image_bytes, settings.max_image_pixels)

    @classmethod
    def open(
        cls, url: str | None = None, *, model: str | None = None, settings: Settings | None = None
    ) -> Catalog:
        """Connect, migrate to the latest schema, and make sure an active model is registered.

        ``url`` defaults to ``IMGSEARCH_DATABASE_URL``, else the embedded server (started on demand).
        On a new catalog ``model`` (default ``IMGSEARCH_MODEL``) becomes the active model; its
        dimension is known without loading weights.
        """
        settings = settings or Settings()
        engine = db_engine.make_engine(url or db_engine.resolve_url(settings))
        try:
            if migrate.current(engine) != migrate.head():
                migrate.upgrade(engine)
            with engine.begin() as conn:
                active = vector_index.active_model(conn)
                if active is None:
                    name = model or settings.model
                    active = vector_index.register_model(conn, name, model_dim(name), activate=True)
        except OperationalError as exc:
            engine.dispose()
            raise DatabaseUnavailable(
                f"database connection failed while opening the catalog: {exc.orig}"
            ) from exc
        except BaseException:
            engine.dispose()
            raise
        if model is not None and model != active.name:
            engine.dispose()
            raise ConfigurationError(
                f"the catalog's active model is {active.name!r}, not {model!r}; "
                "switch with `imgsearch reembed` and `imgsearch model activate`"
            )
        return cls(engine, active, settings)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string()!r}, model={self.model!r})"

    @property
    def model(self) -> str:
        """Name of the active embedding model."""
        return self._model.name

    @property
    def dim(self) -> int:
        """Dimension of the active model's embeddings."""
        return self._model.dim

    @property
    def active_model(self) -> ModelInfo:
        return self._model

    # -- ingest ---------------------------------------------------------------------------

    def add(
        self,
        image: Any = None,
        *,
        tenant: str,
        product_id: str,
        embedding: Any = None,
        category: str | None = None,
        price: Any = None,
        currency: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> int:
        """Store one image (a path, bytes, a binary file object or an http(s) URL) and return its id.

        Without ``embedding`` the image is committed as ``pending`` for the workers to embed;
        with one (a sequence of ``catalog.dim`` numbers) it is stored as ``ready``. The same bytes
        uploaded again by the same tenant return the existing image's id.
        """
        row = {
            "image": image,
            "embedding": embedding,
            "tenant": tenant,
            "product_id": product_id,
            "category": category,
            "price": price,
            "currency": currency,
            "attributes": attributes,
        }
        prepared = ingest.prepare_row(row, dim=self.dim, limits=self._limits)
        with self.engine.begin() as conn:
            ids, _ = ingest.write_rows(conn, [prepared], self._model)
        return ids[0]

    def add_many(self, rows: Iterable[Mapping[str, Any]], *, progress: bool | None = None) -> list[int]:
        """Store many uploads atomically: every row is validated first, and one bad row fails the
        call (its index in the message) with nothing written. Returns ids in row order.

        ``progress`` shows a progress bar; by default only when stderr is a terminal.
        """
        from tqdm import tqdm

        show = sys.stderr.isatty() if progress is None else progress
        rows = list(rows)
        prepared = ingest.prepare_rows(
            tqdm(rows, desc="checking", unit="row", disable=not show), dim=self.dim, limits=self._limits
        )
        ids: list[int] = []
        with (
            self.engine.begin() as conn,
            tqdm(total=len(prepared), desc="writing", unit="row", disable=not show) as bar,
        ):
            for chunk in ingest.chunks(prepared):
                chunk_ids, _ = ingest.write_rows(conn, chunk, self._model)
                ids.extend(chunk_ids)
                bar.update(len(chunk))
        return ids

    # -- read -----------------------------------------------------------------------------

    def get(self, image_id: int) -> ImageRecord:
        """The stored state and metadata of one image; :class:`NotFound` if there is none."""
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise NotFound(f"no image with id {image_id!r}")
        has_embedding = exists().where(Embedding.image_id == Image.id, Embedding.model_id == self._model.id)
        stmt = (
            select(
                Image.id.label("image_id"),
                Image.tenant,
                Product.product_id,
                Product.category,
                Product.price,
                Product.currency,
                Product.attributes,
                Image.state,
                Image.error,
                Image.attempts,
                Image.sha256,
                Image.width,
                Image.height,
                Image.format,
                Image.byte_size,
                Image.uri,
                Image.created_at,
                Image.updated_at,
                has_embedding.label("has_embedding"),
            )
            .join(Product, Product.id == Image.product_pk)
            .where(Image.id == image_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        values = row._asdict()
        values["sha256"] = values["sha256"].hex() if values["sha256"] else None
        values["attributes"] = dict(values["attributes"])
        return ImageRecord(**values)

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        *,
        vector: Any = None,
        similar_to: int | None = None,
        tenant: str | None = None,
        category: str | list[str] | None = None,
        price_min: Any = None,
        price_max: Any = None,
        attributes: dict[str, Any] | None = None,
        where: Any = None,
        k: int = 10,
        offset: int = 0,
    ) -> list[Hit]:
        """The ``k`` nearest images (after ``offset``) matching every filter, nearest first.

        Give exactly one query: ``vector`` (``catalog.dim`` numbers) or ``similar_to`` (an image id:
        "more like this", the image itself left out). Returns ``min(k, matching rows)`` hits.

        >>> catalog.search(vector=v, tenant="acme", category=["shoes", "boots"], price_max=100)  # doctest: +SKIP
        """
        queries = {"vector": vector, "similar_to": similar_to}
        given = [name for name, value in queries.items() if value is not None]
        if len(given) != 1:
            raise InvalidQuery(f"give exactly one query of {sorted(queries)}, got {given or 'none'}")
        k, offset = search.check_page(k, offset)
        filters = search.Filters(tenant, category, price_min, price_max, attributes, where)
        with self.engine.begin() as conn:
            if similar_to is not None:
                query = self._embedding_of(conn, similar_to, tenant)
                filters = search.Filters(
                    tenant,
                    category,
                    price_min,
                    price_max,
                    attributes,
                    _and(where, Embedding.image_id != similar_to),
                )
            else:
                query = vectors.as_vector(vector, self.dim, "query vector")
            hits, _ = search.search_vector(conn, self._model, query, filters, k, offset)
        return hits

    def _embedding_of(self, conn: Any, image_id: Any, tenant: str | None) -> vectors.Vector:
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise InvalidQuery(f"similar_to must be an image id (an integer), got {image_id!r}")
        stmt = select(Embedding.embedding).where(
            Embedding.image_id == image_id, Embedding.model_id == self._model.id
        )
        if tenant is not None:
            stmt = stmt.where(Embedding.tenant == tenant)
        found = conn.execute(stmt).first()
        if found is None:
            raise NotFound(f"no embedded image with id {image_id}")
        return vectors.as_vector(found[0], self.dim)


def _and(where: Any, condition: Any) -> Any:
    from sqlalchemy import and_

    return condition if where is None else and_(where, condition)
