"""What a search is for, as a vector: a text (through the catalog's text cache), an image (a file,
bytes, a URL or a region of one), a stored image ("more like this image"), a stored product ("more
like this item", the mean of its images) or a vector given by the caller.

Text and image queries are embedded before any connection is taken (a forward pass takes tens of
ms on a CPU); stored queries are read in the search's own transaction, on the database that answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, and_, select
from sqlalchemy.exc import DBAPIError

from imgsearch.db.models import Embedding, Product
from imgsearch.errors import InvalidQuery, NotFound, UnknownHost
from imgsearch.ingest import checks, images, vectors
from imgsearch.records import ModelInfo
from imgsearch.search.filters import Filters
from imgsearch.work import text_requests

if TYPE_CHECKING:
    from imgsearch.context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """What :meth:`imgsearch.Catalog.search` was asked to search for: exactly one of ``text``,
    ``image`` (with ``box``, a region of it), ``similar_to`` (an image id), ``similar_to_product``
    (a product id of the filter's tenant) or ``vector``."""

    text: str | None = None
    image: Any = None
    similar_to: Any = None
    similar_to_product: Any = None
    vector: Any = None
    box: Sequence[float] | None = None
    # the image's (or its box's) vector, already embedded by the caller (shop the look: one
    # photo's crops, decoded once and embedded together)
    embedded: vectors.Vector | None = None

    @property
    def stored(self) -> bool:
        """The query is a stored image or product, read in the search's transaction."""
        return self.similar_to is not None or self.similar_to_product is not None

    @property
    def of_images(self) -> bool:
        """An image query or "more like this": searched under the catalog's image model."""
        return self.image is not None or self.stored

    def model(self, context: Context) -> ModelInfo:
        """The model this query searches: the image model for images, else the active model."""
        return context.image_model if self.of_images else context.active_model

    def check(self, filters: Filters) -> None:
        """Exactly one query kind, and what it needs of the filters and the other arguments."""
        if self.box is not None and self.image is None:
            raise InvalidQuery("box applies to image queries only")
        kinds = {
            "text": self.text,
            "image": self.image,
            "similar_to": self.similar_to,
            "similar_to_product": self.similar_to_product,
            "vector": self.vector,
        }
        given = [name for name, value in kinds.items() if value is not None]
        if len(given) != 1:
            raise InvalidQuery(f"give exactly one query of {sorted(kinds)}, got {given or 'none'}")
        if self.similar_to_product is not None and filters.tenant_name() is None:
            raise InvalidQuery("similar_to_product needs tenant=: product ids name products within a tenant")

    def embed(self, context: Context) -> vectors.Vector | None:
        """The query vector (the query :meth:`check`-ed first, by the caller), computed before any
        connection is taken; None for ``similar_to`` and ``similar_to_product``, whose vectors
        :func:`stored_vector` reads in the search's transaction."""
        if self.text is not None:
            return text_vector(context, self.text)
        if self.image is not None:
            if self.embedded is not None:
                return self.embedded
            data = image_bytes(context, self.image)
            if self.box is not None:
                data = images.crop(data, self.box, context.limits)
            return context.image_embedder.embed_image(data)
        if self.vector is not None:
            return vectors.as_vector(self.vector, context.dim, "query vector")
        return None


def image_bytes(context: Context, image: Any) -> bytes:
    """A query image's bytes: a path, bytes, a file object, or an http(s) URL downloaded."""
    if images.is_url(image):
        url = checks.url(str(image), "query image URL", InvalidQuery)
        try:
            return context.settings.downloads().fetch(url)
        except UnknownHost as exc:  # a worker would retry; a query's URL is its caller's to fix
            raise InvalidQuery(f"query image URL: {exc}") from exc
    return images.read_source(image, context.limits)


def vector_now(context: Context, query: Query, filters: Filters) -> tuple[vectors.Vector, Filters]:
    """The query vector at once, a stored one read on a connection of its own (for a statement
    that the caller runs later: :meth:`imgsearch.Catalog.search_select`)."""
    query.check(filters)
    found = query.embed(context)
    if found is not None:
        return found, filters
    with context.engine.connect() as conn:
        return stored_vector(conn, query.model(context), query, filters)


def text_vector(context: Context, query: str) -> vectors.Vector:
    """A text query's vector: from this process's text cache, else from the catalog's
    (``imgsearch.text_embeddings``, which workers fill for ``imgsearch.search_text``), else
    embedded here and put in both. The catalog's cache is a convenience: when it can't be read
    or written, the text is embedded here as before."""
    embedder = context.embedder
    row = embedder.cached_text(query)
    if row is not None:
        return row
    model_id = context.active_model.id
    try:
        with context.engine.begin() as conn:
            shared = text_requests.cached(conn, model_id, query)
    except DBAPIError as exc:
        log.debug("text cache not readable: %s", exc.orig)
        shared = None
    if shared is not None and len(shared.vector) == context.dim:
        embedder.remember_text(query, shared.vector)
        return shared.vector
    row = embedder.embed_text(query)
    try:
        with context.engine.begin() as conn, conn.begin_nested():  # a savepoint: a refusal ends here
            text_requests.store(conn, model_id, [(query, row)], embedder.logit_params())
    except DBAPIError as exc:
        log.debug("text cache not writable: %s", exc.orig)
    return row


def stored_vector(
    conn: Connection, model: ModelInfo, query: Query, filters: Filters
) -> tuple[vectors.Vector, Filters]:
    """A query read from the database: an image's embedding, the image left out of the hits;
    or a product's (the mean of its images'), all of its images left out."""
    tenant = filters.tenant_name()
    if query.similar_to_product is None:
        found = _embedding_of(conn, model, query.similar_to, tenant)
        return found, replace(filters, exclude_image=query.similar_to)
    assert tenant is not None  # Query.check checked
    product_id = checks.identifier(query.similar_to_product, "similar_to_product", InvalidQuery)
    rows = conn.execute(
        select(Product.id, Embedding.embedding)
        .select_from(Product)
        .outerjoin(
            Embedding,
            and_(Embedding.product_pk == Product.id, Embedding.model_id == model.id, Embedding.region == 0),
        )
        .where(Product.tenant == tenant, Product.product_id == product_id)
    ).all()
    if not rows:
        raise NotFound(f"tenant {tenant!r} has no product {product_id!r}")
    embedded = [vectors.as_vector(row.embedding, model.dim) for row in rows if row.embedding is not None]
    if not embedded:
        raise NotFound(f"product {product_id!r} of tenant {tenant!r} has no embedded image yet")
    mean = vectors.as_vector(
        np.mean(embedded, axis=0), model.dim, f"the mean of product {product_id!r}'s images"
    )
    return mean, replace(filters, exclude_product=rows[0].id)


def _embedding_of(conn: Connection, model: ModelInfo, image_id: Any, tenant: str | None) -> vectors.Vector:
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise InvalidQuery(f"similar_to must be an image id (an integer), got {image_id!r}")
    if not checks.stored_id(image_id):
        raise NotFound(f"no embedded image with id {image_id}")
    stmt = select(Embedding.embedding).where(
        Embedding.image_id == image_id, Embedding.model_id == model.id, Embedding.region == 0
    )
    if tenant is not None:
        stmt = stmt.where(Embedding.tenant == tenant)
    found = conn.execute(stmt).first()
    if found is None:
        raise NotFound(f"no embedded image with id {image_id}")
    return vectors.as_vector(found[0], model.dim)
