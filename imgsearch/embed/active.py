"""The model an open catalog embeds and searches with, and its embedder.

A new catalog has no model until it first needs one: the first embedding stored (an upload or
import that brings a vector, a worker's first batch) or a model command registers it. Until then
the catalog uses the configured model (``IMGSEARCH_MODEL``, or ``model=``) unregistered: searches
find nothing, and nothing is decided that a later ``IMGSEARCH_MODEL`` couldn't change. So a first
run with the wrong model (a hub model offline, say) traps nobody.

Once registered, the registry's active model is followed when it is switched elsewhere
(``imgsearch model activate``). A configured model that differs from the active one replaces it
while the active one has no embeddings; otherwise :func:`resolve` refuses, naming the command that
switches (:func:`switch_command`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from imgsearch.db import vector_index
from imgsearch.embed.registry import canonical_name, model_dim
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, InvalidQuery, NotFound
from imgsearch.records import UNREGISTERED, ModelInfo
from imgsearch.settings import Settings

if TYPE_CHECKING:
    from imgsearch.embed.model import Embedder

log = logging.getLogger(__name__)


def configured_model(settings: Settings, model: str | None = None) -> str | None:
    """The model the caller asked for: ``model``, else ``IMGSEARCH_MODEL`` when it is set (the
    default name alone doesn't count: it never overrides a catalog's model)."""
    if model is not None:
        return model
    return settings.model if "model" in settings.model_fields_set else None


def unregistered(name: str) -> ModelInfo:
    """``name`` as the model of a catalog that has none registered yet (its dimension read without
    weights)."""
    canonical = canonical_name(name)
    return ModelInfo(UNREGISTERED, canonical, model_dim(canonical), active=True)


def switch_command(name: str) -> str:
    return f"imgsearch reembed --model {name} --activate"


def open_model(
    engine: Engine, configured: str | None, default: str, *, insist: bool = False, strict: bool = True
) -> ModelInfo:
    """:func:`resolve` on a connection of its own; a database that can't be reached is
    :class:`DatabaseUnavailable`."""
    try:
        with engine.connect() as conn:
            return resolve(conn, configured, default, insist=insist, strict=strict)
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"database connection failed while opening the catalog: {exc.orig}"
        ) from exc


def resolve(
    conn: Connection, configured: str | None, default: str, *, insist: bool = False, strict: bool = True
) -> ModelInfo:
    """The model a catalog opened now works with, reading only: the active one, or ``configured``
    (else ``default``) unregistered when there is none.

    A ``configured`` model that differs from the active one: when it is another model of the
    catalog (one switched from, or backfilled for a switch), the catalog follows the active one: a
    model switch under way or done, which a restart must survive. A model the catalog has never
    seen replaces an active model without embeddings (registered at the first need); one with
    embeddings stays, and it is :class:`ConfigurationError` naming the command to switch (workers,
    ``strict=False``, follow it). ``insist`` (``Catalog.open(model=...)``) treats every model as
    never seen."""
    active = vector_index.active_model(conn)
    if active is None:
        return unregistered(configured or default)
    if configured is None or canonical_name(configured) == active.name:
        return active
    if vector_index.get_model(conn, canonical_name(configured)) is not None and not insist:
        return active  # a model of this catalog: a switch under way (activated, being embedded) or done
    if not vector_index.has_embeddings(conn, active.id):
        return unregistered(configured)
    if not strict:
        return active
    raise ConfigurationError(
        f"the catalog's active model is {active.name!r} and it has embeddings, not {configured!r} as "
        f"configured; switch with `{switch_command(configured)}` (it embeds every image again, "
        f"then activates), or unset IMGSEARCH_MODEL to keep {active.name!r}"
    )


def registered_named(engine: Engine, name: str) -> ModelInfo:
    """The registered model ``name``; :class:`NotFound` naming the command that registers one."""
    with engine.connect() as conn:
        model = vector_index.get_model(conn, canonical_name(name))
    if model is None:
        raise NotFound(f"no model {name!r} in the catalog; register and backfill it with `imgsearch reembed`")
    return model


def register(engine: Engine, model: ModelInfo) -> ModelInfo:
    """Register ``model`` and make it the active model, at a catalog's first need of one: it
    replaces an active model without embeddings; an active one with embeddings stays, and is
    returned (the catalog follows it). Serialised with embedding writes and other switches."""
    if model.registered:
        return model
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": vector_index.MODEL_SWITCH_LOCK})
        active = vector_index.active_model(conn)
        if active is not None and (active.name == model.name or vector_index.has_embeddings(conn, active.id)):
            return active
        registered = vector_index.register_model(
            conn, model.name, model.dim, activate=True, external=model.external
        )
    log.info("registered %s (%d-d) as the catalog's active model", registered.name, registered.dim)
    return registered


class ActiveModel:
    """``info`` is the model in use (perhaps not registered yet); ``pinned`` keeps it whatever the
    registry says."""

    def __init__(
        self,
        engine: Engine,
        info: ModelInfo,
        settings: Settings,
        embedder: Embedder | None = None,
        *,
        pinned: bool = False,
    ) -> None:
        self.engine, self.info, self.settings, self.pinned = engine, info, settings, pinned
        # an embedder handed over is shared only when it is the model's
        self.created: Embedder | None = embedder if embedder is None or embedder.name == info.name else None
        # the model that serves image queries beside the active one (None: the active one does)
        self.images: ModelInfo | None = None
        self.images_created: Embedder | None = None
        if info.registered and not pinned:
            with engine.connect() as conn:
                self._set_images(vector_index.image_model(conn))
        self._checked = time.monotonic()

    def _set_images(self, found: ModelInfo | None) -> None:
        images = None if found is None or found.id == self.info.id else found
        if (images and images.name) != (self.images and self.images.name):
            self.images_created = None
        self.images = images

    @property
    def image_info(self) -> ModelInfo:
        """The model image queries and "more like this" use (a pinned model serves them all)."""
        return self.info if self.images is None or self.pinned else self.images

    def follow(self, every_seconds: float) -> None:
        """Pick up a switch made elsewhere, reading the registry at most every ``every_seconds``:
        later uploads and searches use the new model, and an embedder of it. An unregistered model
        gives way to one registered since, once that one has embeddings (a worker's first batch)."""
        now = time.monotonic()
        # an unregistered model looks every time: another process may register one any moment
        if self.pinned or (self.info.registered and now - self._checked < every_seconds):
            return
        with self.engine.connect() as conn:
            active = vector_index.active_model(conn)
            replaceable = (
                active is not None
                and not self.info.registered
                and active.name != self.info.name
                and not vector_index.has_embeddings(conn, active.id)
            )
            if replaceable:
                active = None  # this catalog's model still replaces it at its first embedding
            images = vector_index.image_model(conn)
        self._checked = now
        if active is not None and active.id != self.info.id:
            log.info("the catalog's active model is now %s (%d-d)", active.name, active.dim)
            if active.name != self.info.name:
                self.created = None
            self.info = active
        if active is not None:
            self._set_images(images)

    def registered(self) -> ModelInfo:
        """The model, registered now if it wasn't (its first embedding is about to be stored)."""
        if not self.info.registered:
            found = register(self.engine, self.info)
            if found.name != self.info.name:
                self.created = None
            self.info = found
        return self.info

    def image_embedder(self, on_query_batch: Callable[[str, int], None] | None = None) -> Embedder:
        """The embedder of the model image queries use (:attr:`image_info`)."""
        images = self.images
        if images is None or self.pinned:
            return self.embedder(on_query_batch)
        if images.external:
            raise InvalidQuery(
                f"the catalog's image model {images.name!r} embeds nothing here: its vectors come from "
                "elsewhere; search images with a query vector (vector=) made by that model"
            )
        if self.images_created is None:
            from imgsearch.embed.model import Embedder

            self.images_created = Embedder.from_settings(self.settings, name=images.name)
            if on_query_batch is not None:
                self.images_created.on_query_batch(on_query_batch)
        return self.images_created

    def embedder(self, on_query_batch: Callable[[str, int], None] | None = None) -> Embedder:
        """The model's embedder, created at the first call, told of each query batch's forward pass.
        :class:`InvalidQuery` for a model whose vectors come from elsewhere."""
        if self.info.external:
            raise InvalidQuery(
                f"the catalog's model {self.info.name!r} embeds nothing here: its vectors come from "
                "elsewhere (imgsearch model add); search with a query vector (vector=) made by that model"
            )
        if self.created is None:
            from imgsearch.embed.model import Embedder

            self.created = Embedder.from_settings(self.settings, name=self.info.name)
            if on_query_batch is not None:
                self.created.on_query_batch(on_query_batch)
        return self.created
