"""What the :class:`~imgsearch.Catalog` hands the packages that do its work: its engine, settings
and image limits, its active model with that model's embedder, and the waker of the workers
(searches get it inside a :class:`imgsearch.search.service.Searcher`, with their own parts).

The packages below the entry point (:mod:`imgsearch.ingest.uploads`,
:mod:`imgsearch.search.service`, :mod:`imgsearch.search.queries`,
:mod:`imgsearch.quality.duplicates`) take a :class:`Context`, never the Catalog: nothing the Catalog
hands work to imports it back (docs/architecture.md). A context is made by the Catalog, or by a
caller that wants those packages without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

if TYPE_CHECKING:
    from imgsearch.embed.active import ActiveModel
    from imgsearch.embed.model import Embedder
    from imgsearch.ingest.images import Limits
    from imgsearch.records import ModelInfo
    from imgsearch.settings import Settings
    from imgsearch.work.wake import Waker

MODEL_REFRESH_SECONDS = 5.0  # how soon an open catalog follows `imgsearch model activate`


@dataclass(eq=False)
class Context:
    """One catalog's shared state, as its packages read it."""

    engine: Engine
    settings: Settings
    limits: Limits
    active: ActiveModel  # replaced when the catalog switches models itself (add_model)
    waker: Waker | None = None
    # told each forward pass of text or image queries (kind, queries in it); e.g. for metrics
    on_query_batch: Callable[[str, int], None] | None = field(default=None)

    @property
    def active_model(self) -> ModelInfo:
        """The model in use (perhaps not registered yet)."""
        return self.active.info

    @property
    def dim(self) -> int:
        return self.active.info.dim

    @property
    def embedder(self) -> Embedder:
        """The active model's embedder, created on first use (weights load on the first forward pass)."""
        return self.active.embedder(self.on_query_batch)

    @property
    def image_model(self) -> ModelInfo:
        """The model image queries and "more like this" use: the one serving images beside the
        active model when the catalog keeps one (``imgsearch model activate NAME --for image``),
        else the active model."""
        return self.active.image_info

    @property
    def image_embedder(self) -> Embedder:
        """:attr:`image_model`'s embedder, created on first use."""
        return self.active.image_embedder(self.on_query_batch)

    def registered_model(self) -> ModelInfo:
        """The active model, registered now if the catalog has none yet (its first embedding does)."""
        return self.active.registered()

    def follow_model_switch(self) -> None:
        """Pick up a model switched by another process (`imgsearch model activate`)."""
        self.active.follow(MODEL_REFRESH_SECONDS)
