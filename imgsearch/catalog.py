"""The Catalog: the public entry point. Each method hands over to the package that owns the work,
along the data's path (docs/architecture.md); the catalog holds what they share: the engines, the
settings and the active model with its embedder (:mod:`imgsearch.embed.active`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Select

from imgsearch.context import Context
from imgsearch.db import engine as db_engine
from imgsearch.db import filter_indexes, lookups, migrate
from imgsearch.embed.active import ActiveModel, configured_model, open_model, registered_named
from imgsearch.hooks.webhooks import Webhooks
from imgsearch.ingest import bulk, images, removal, updates, uploads, vector_files
from imgsearch.ingest import duplicates as near_duplicates
from imgsearch.learning import boosts as learned
from imgsearch.learning import events as events_log
from imgsearch.quality import duplicates as duplicate_groups
from imgsearch.records import ImageRecord, Look, ModelInfo, SearchResult
from imgsearch.search import look, plans, queries, routing, service, statements
from imgsearch.search.filters import MAX_K, Filters, check_page
from imgsearch.search.plans import Plan
from imgsearch.search.replicas import Replicas
from imgsearch.settings import Settings
from imgsearch.work import ready, reembed, regions, wake

if TYPE_CHECKING:
    from imgsearch.embed.model import Embedder


class Catalog:
    """Product images, their embeddings and searches over them, in one PostgreSQL database.

    >>> with Catalog.open() as catalog:                      # doctest: +SKIP
    ...     image_id = catalog.add(image="shoe.jpg", tenant="acme", product_id="sku-1")
    ...     catalog.get(image_id).state
    'pending'
    """

    def __init__(
        self, engine: Engine, model: ModelInfo, settings: Settings, waker: wake.Waker | None = None,
        embedder: Embedder | None = None, search_engine: Engine | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.engine, self.settings, self.waker = engine, settings, waker
        self._search_engine = search_engine or engine
        self.replicas = replicas  # hot standbys searches go to first; None: the primary only
        limits = images.Limits(settings.max_image_bytes, settings.max_image_pixels, settings.max_aspect_ratio)
        self._context = Context(engine, settings, limits, ActiveModel(engine, model, settings, embedder), waker)
        self._searcher = service.Searcher(self._context, routing.Router(engine, self._search_engine, replicas))

    @property
    def on_search_plan(self) -> Callable[[Plan], None] | None:  # told each search statement's plan
        return self._searcher.on_search_plan

    @on_search_plan.setter
    def on_search_plan(self, hook: Callable[[Plan], None] | None) -> None:
        self._searcher.on_search_plan = hook

    @property
    def on_query_batch(self) -> Callable[[str, int], None] | None:  # each query forward pass (kind, size)
        return self._context.on_query_batch

    @on_query_batch.setter
    def on_query_batch(self, hook: Callable[[str, int], None] | None) -> None:
        self._context.on_query_batch = hook

    @classmethod
    def open(
        cls, url: str | None = None, *, model: str | None = None, settings: Settings | None = None,
        embedder: Embedder | None = None, replicas: Sequence[str] | None = None,
    ) -> Catalog:
        """Connect (``url``, default ``IMGSEARCH_DATABASE_URL``, else the embedded server) and migrate.
        ``model`` (default ``IMGSEARCH_MODEL``) is a new catalog's model, registered at its first
        embedding (:mod:`imgsearch.embed.active`). ``embedder`` shares a loaded embedder of it;
        searches go to ``replicas`` (default ``IMGSEARCH_REPLICA_URLS``), standbys of ``url``."""
        settings = settings or Settings()
        limits = (settings.pool_size, settings.lock_timeout_ms)
        engine = db_engine.make_engine(url or db_engine.resolve_url(settings), *limits)
        try:
            migrate.ensure_current(engine)
            configured = configured_model(settings, model)
            active = open_model(engine, configured, settings.model, insist=model is not None)
        except BaseException:
            engine.dispose()
            raise
        search_engine = db_engine.make_search_engine(engine, *limits)
        standbys = Replicas.from_settings(settings, replicas)
        return cls(engine, active, settings, wake.from_settings(settings), embedder, search_engine, standbys)

    def with_model(self, name: str) -> Catalog:
        """This catalog's searches under another registered model (backfilled by ``imgsearch reembed``, not
        active yet), e.g. to compare before ``model activate``; close this catalog, not it."""
        model = registered_named(self.engine, name)
        pinned = Catalog(self.engine, model, self.settings, None, None, self._search_engine, self.replicas)
        pinned._context.active.pinned = True  # no following switches
        return pinned

    def close(self) -> None:
        self._searcher.recorder.close()  # the searches' rows written first
        for engine in (self.engine, self._search_engine):
            engine.dispose()
        if self.replicas is not None:
            self.replicas.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string()!r}, model={self.model!r})"

    @property
    def search_engine(self) -> Engine:  # the engine searches run on (imgsearch.db.engine.make_search_engine)
        return self._search_engine

    @property
    def model(self) -> str:  # the name of the active embedding model
        return self._context.active_model.name

    @property
    def dim(self) -> int:  # the dimension of the active model's embeddings
        return self._context.dim

    @property
    def limits(self) -> images.Limits:  # the byte and pixel limits of uploaded images
        return self._context.limits

    @property
    def active_model(self) -> ModelInfo:  # the model in use (perhaps not registered yet)
        return self._context.active_model

    @property
    def image_model(self) -> ModelInfo:  # image queries': the model serving images beside the active one, or it
        return self._context.image_model

    def registered_model(self) -> ModelInfo:  # the active model, registered now if not yet (its first embedding does)
        return self._context.registered_model()

    def add_model(self, name: str, dim: int, *, activate: bool = False) -> ModelInfo:
        """Register a model whose vectors come from elsewhere (FashionCLIP, OpenAI, a shop's own):
        uploads and imports bring them, searches take ``vector=``; ``activate`` switches to it."""
        model = reembed.add_external(self.engine, name, dim, make_active=activate)
        if activate:
            self._context.active = ActiveModel(self.engine, model, self.settings)
        return model

    @property
    def embedder(self) -> Embedder:
        """The active model's embedder, created on first use; weights load on the first text or image
        query (searching by vector or by image id never loads them)."""
        return self._context.embedder

    @property
    def webhooks(self) -> Webhooks:  # the tenants' webhook endpoints, replays, delivery figures
        return Webhooks(self.engine, self.settings.webhooks())

    @property
    def regions(self) -> regions.Regions:  # where images' regions come from; their backfill
        return regions.Regions(self._context, on_change=self._searcher.router.forget_graphs)

    # -- ingest: imgsearch.ingest ---------------------------------------------------------

    def add(
        self, image: Any = None, *, tenant: str, product_id: str, embedding: Any = None,
        category: str | None = None, price: Any = None, currency: str | None = None,
        attributes: Mapping[str, Any] | None = None, on_duplicate: near_duplicates.OnDuplicate = "keep",
        title: str | None = None, description: str | None = None, brand: str | None = None,
    ) -> int:
        """Store one image (a path, bytes, a binary file object or an http(s) URL); its id.

        Committed as ``pending`` for the workers, or ``ready`` with an ``embedding`` (``catalog.dim``
        numbers). The same bytes again from the same tenant return the stored image's id, now this
        product's too (a shared photo is stored and embedded once, and found as each product).
        ``on_duplicate`` (``"keep"``, ``"link"``, ``"reject"``): what a near-copy of another
        product's image gets (:mod:`imgsearch.ingest.duplicates`)."""
        fields = dict(image=image, embedding=embedding, tenant=tenant, product_id=product_id, category=category)
        fields.update(price=price, currency=currency, attributes=attributes, title=title, description=description, brand=brand)
        return self.add_row(fields, on_duplicate=on_duplicate)[0]

    def add_row(self, row: Mapping[str, Any], *, on_duplicate: near_duplicates.OnDuplicate = "keep") -> uploads.Stored:
        """:meth:`add` for a row dict (the keys of :meth:`add_many`); also whether the image was new
        (False: the tenant had the bytes; ``.shared``: for another product, whose it now is too)."""
        self._context.follow_model_switch()
        return uploads.add_row(self._context, row, on_duplicate)

    def add_many(
        self, rows: Iterable[Mapping[str, Any]], *, progress: bool | None = None,
        on_duplicate: near_duplicates.OnDuplicate = "keep",
    ) -> list[int]:
        """Store many uploads atomically: every row is checked first, and one bad row fails the
        call (its index in the message) with nothing written; ids in row order. ``progress``: a
        bar (by default when stderr is a terminal). ``on_duplicate`` as in :meth:`add`, rows of this
        call counting as stored for each other."""
        self._context.follow_model_switch()
        return uploads.add_many(self._context, rows, progress=progress, on_duplicate=on_duplicate)

    def duplicates(
        self, tenant: str, *, max_hamming: int | None = None,
        max_distance: float | near_duplicates.Unset | None = near_duplicates.UNSET, progress: bool | None = None,
    ) -> duplicate_groups.Report:
        """Groups of near-identical images of different products of ``tenant``: pairs within
        ``max_hamming`` bits of perceptual hash confirmed by an embedding distance of at most
        ``max_distance`` (None: the hash alone); defaults from the settings (quality/duplicates.py)."""
        self._context.follow_model_switch()
        return duplicate_groups.find_groups(self._context, tenant, max_hamming=max_hamming, max_distance=max_distance, progress=progress)

    def import_vectors(self, source: Any, **options: Any) -> int:
        """Bulk import of existing embeddings; the number of images imported (:mod:`imgsearch.ingest.bulk`).

        ``source``: a path (Parquet; ``.npy`` with ``metadata``, a CSV or JSONL of its rows; JSON
        Lines) or an iterable of :meth:`add_many` rows with ``embedding``; ``tenant`` for rows that
        name none. All or nothing, a bad row named; rows the tenant has already are skipped. The
        options of :meth:`import_report`."""
        return self.import_report(source, **options).imported

    def import_report(
        self, source: Any, *, tenant: str | None = None, metadata: Any = None, progress: bool | None = None,
        rebuild_index: bool | None = None, maintenance_work_mem: str | None = None, parallel_workers: int | None = None,
    ) -> bulk.ImportResult:
        """:meth:`import_vectors`, telling what happened: rows read, imported, duplicates, whether
        the index was rebuilt and with which settings, and how long each step took."""
        self._context.follow_model_switch()
        rows = vector_files.rows_of(source, metadata=metadata)
        return bulk.import_rows(
            self.engine, self.registered_model(), rows, limits=self._context.limits, tenant=tenant, progress=progress,
            rebuild_index=rebuild_index, maintenance_work_mem=maintenance_work_mem,
            parallel_workers=parallel_workers,
        )

    def update_product(self, product_id: str, *, tenant: str, **fields: Any) -> bool:
        """Set ``category``, ``price``, ``currency``, ``title``, ``description``, ``brand`` (None
        clears) or ``attributes`` (replaced) of one product without uploading its images again;
        whether a value changed, or :class:`NotFound`."""
        return updates.update_one(self.engine, {"tenant": tenant, "product_id": product_id, **fields})

    def update_products(
        self, rows: Iterable[Mapping[str, Any]], *, progress: bool | None = None, names: Sequence[str] | None = None
    ) -> int:
        """:meth:`update_product` for many rows (``tenant``, ``product_id``, fields), all or
        nothing, a bad row or unknown product named by its index (or its ``names`` entry); how many
        products changed. ``progress``: a bar (by default when stderr is a terminal)."""
        return updates.update_many(self.engine, rows, names=names, progress=progress)

    def delete(self, image_id: int, *, tenant: str | None = None) -> None:
        """Delete one image and its embeddings (its product stays); :class:`NotFound` if there is none (of ``tenant``'s)."""
        removal.delete_images(self.engine, [image_id], tenant=tenant)

    def delete_many(self, image_ids: Iterable[int], *, tenant: str | None = None) -> int:
        """Delete every image of ``image_ids`` in one transaction (none if one is :class:`NotFound`); how many."""
        return removal.delete_images(self.engine, image_ids, tenant=tenant)

    def delete_product(self, product_id: str, *, tenant: str) -> int:
        """Delete a product, its images and their embeddings: how many images (:class:`NotFound`: none)."""
        return removal.delete_product(self.engine, product_id, tenant=tenant)

    # -- indexes: imgsearch.db.filter_indexes ---------------------------------------------

    def index_filter_values(
        self, column: str, min_rows: int | None, *, progress: bool | None = None
    ) -> filter_indexes.RefreshResult:
        """Give each value of ``column`` (``"category"`` or ``"tenant"``) with ``min_rows`` rows or
        more an HNSW index of its own, recall-checked at its build; ``min_rows=None`` drops them.
        The rule is kept as values grow and shrink (:mod:`imgsearch.db.filter_indexes`)."""
        with self.engine.begin() as conn:
            filter_indexes.set_rule(conn, column, min_rows)
        return self.refresh_filter_indexes(progress=progress)

    def refresh_filter_indexes(self, *, progress: bool | None = None) -> filter_indexes.RefreshResult:
        """Build and drop per-value indexes as their rules and the values' rows say now."""
        self._context.follow_model_switch()
        result = filter_indexes.refresh_showing(self.engine, self.active_model, progress=progress)
        self._searcher.router.forget_graphs()  # read the new set at the next search
        return result

    def filter_graphs(self) -> list[filter_indexes.Graph]:
        """The per-value indexes of the active model, with their rows and size."""
        self._context.follow_model_switch()
        with self.engine.connect() as conn:
            return filter_indexes.graphs(conn, self.active_model.id)

    # -- read: imgsearch.db.lookups -------------------------------------------------------

    def wait_ready(self, image_ids: Iterable[int], *, tenant: str | None = None, timeout: float = 30) -> dict[int, str]:
        """Each image's state once all are ready or failed, or at ``timeout`` s (:mod:`imgsearch.work.ready`)."""
        return ready.wait_ready(self.engine, image_ids, tenant=tenant, timeout=timeout)

    def get(self, image_id: int, *, tenant: str | None = None) -> ImageRecord:
        """One image's stored state and metadata; :class:`NotFound` if none (of ``tenant``'s)."""
        self._context.follow_model_switch()
        return lookups.image_record(self.engine, self.active_model, image_id, tenant)

    def image_content(self, image_id: int, *, tenant: str | None = None) -> bytes | None:
        """An image's stored bytes; None for one uploaded by URL (workers keep only its embedding)."""
        return lookups.image_bytes(self.engine, image_id, tenant, preview=False)

    def image_preview(self, image_id: int, *, tenant: str | None = None) -> bytes | None:
        """An image to show: its bytes, or the thumbnail kept when they were dropped after embedding
        (``IMGSEARCH_KEEP_CONTENT=false``); None or :class:`NotFound` as :meth:`image_content`."""
        return lookups.image_bytes(self.engine, image_id, tenant, preview=True)

    def categories(self, *, tenant: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        """The categories of the catalog's products (of ``tenant``'s, with a tenant) and how many
        findable products each has (with an embedded image), most first; at most ``limit``."""
        return lookups.categories(self.engine, tenant, limit, self.active_model.id)

    # -- search: imgsearch.search ---------------------------------------------------------

    def search(
        self, *,
        text: str | None = None, image: Any = None, similar_to: int | None = None,
        similar_to_product: str | None = None, vector: Any = None,
        tenant: str | None = None, category: str | list[str] | None = None, price_min: Any = None,
        price_max: Any = None, attributes: dict[str, Any] | None = None, where: Any = None,
        brand: str | None = None, k: int = 10, offset: int = 0,
        group_by_product: bool = False, diversity: float | None = None, expand: int | None = None,
        min_score: float | None = None, min_probability: float | None = None,
        consistent: bool = False, box: Sequence[float] | None = None,
        mode: str | None = None, parse: bool = True, facets: bool = False, total: bool | int = False,
        fusion: service.Fusion | None = None, boost: bool = True, client_id: str | None = None,
        adapter: bool | None = None, interleave: str | None = None, regions: bool = True,
    ) -> SearchResult:
        """The ``k`` best images (after ``offset``) matching every filter: ``min(k, matching
        rows)`` hits, a list with ``.total``, ``.facets`` and ``.understood`` (docs/library.md).

        One query: ``text``, ``image`` (a path, bytes, a file object or an http(s) URL; ``box``: a
        region), ``similar_to`` (an image id), ``similar_to_product`` (of ``tenant``), ``vector``.
        A text's ``mode``: ``"semantic"``, ``"lexical"`` or ``"hybrid"`` (``fusion``; the default
        with product text); ``parse``: read filters from its words ("red shoes under $50").
        Filters: ``tenant``, ``category`` (one or a list), ``price_min``/``price_max``, ``brand``,
        ``attributes`` (JSONB containment), ``where`` (SQLAlchemy over :mod:`imgsearch.db.models`).
        ``facets``/``total``: count the whole match set (``total=N``: up to N matches, then
        ``.total_relation`` ``"gte"``). ``group_by_product``, ``diversity``
        (MMR λ), ``expand``, ``min_score`` (cosine), ``min_probability`` (text on SigLIP);
        ``consistent``: a replica answers once it has replayed every acknowledged write.
        ``boost``: blend the tenant's learned boosts (hits carry ``boost``). The answer's
        ``query_id`` names the search for :meth:`record_events` (``client_id``: who searched).
        ``adapter``: map the query with the tenant's query adapter (default: text and image queries);
        ``interleave="boost,plain"``: two variants' hits drafted in turns (docs/learning.md). ``regions``:
        an image ranks by the closer of its whole row and its best region (hits carry ``region``)."""
        query = queries.Query(text, image, similar_to, similar_to_product, vector, box)
        learning = (boost, client_id, adapter, interleave, regions)
        how = service.Asked(query, mode, parse, facets, total, consistent, fusion, min_probability, *learning)
        filters = Filters(tenant, category, price_min, price_max, attributes, where, brand=brand)
        page = (k, offset, group_by_product, diversity, expand, min_score)
        return service.search(self._searcher, filters, how, *page)

    def search_look(
        self, *, image: Any, tenant: str | None = None, category: str | list[str] | None = None,
        price_min: Any = None, price_max: Any = None, brand: str | None = None, k: int = 10,
        objects: int = look.MAX_OBJECTS, regions: bool = True, client_id: str | None = None,
    ) -> list[Look]:
        """Shop the look: each object of the photo ``image`` (the catalog's detector's, else its quarters and
        centre) as ``Look(box, label, score, hits)``, its crop's hits (a label naming a shop's category filters)."""
        filters = Filters(tenant, category, price_min, price_max, brand=brand)
        return look.search_look(self._searcher, image, filters, k, objects, regions=regions, client_id=client_id)

    # -- learn: imgsearch.learning ------------------------------------------------------

    def record_events(self, tenant: str | None, events: Iterable[Mapping[str, Any]]) -> events_log.Recorded:
        """Record shoppers' ``impression``, ``click``, ``add_to_cart``, ``purchase`` events on a search's
        hits (``query_id``, ``action``, ``object_id``, ``position``, ``time``?, ``event_id``?), all or none:
        :class:`InvalidEvents` names each bad one by index. ``tenant``: the searches' (None: an admin's)."""
        return events_log.record(self.engine, tenant, events, before=self._searcher.recorder.flush)

    def refresh_boosts(self, *, tenant: str | None = None) -> learned.Refreshed:
        """Learn the boosts from the feedback now (beat does it every ``boost_refresh_seconds``)."""
        self._searcher.before_learning()  # its searches' rows written; tenants with boosts read again
        return learned.refresh(self.engine, learned.Policy.from_settings(self.settings), tenant)

    def search_select(
        self, *,
        text: str | None = None, image: Any = None, similar_to: int | None = None,
        similar_to_product: str | None = None, vector: Any = None,
        tenant: str | None = None, category: str | list[str] | None = None, price_min: Any = None,
        price_max: Any = None, attributes: dict[str, Any] | None = None, where: Any = None,
        k: int = 10,
    ) -> Select[Any]:
        """The same search as a composable ``Select`` (columns ``image_id, product_id, tenant,
        category, price, distance``) for ORM apps: add joins, columns and ``where`` clauses, keep its
        ``ORDER BY`` and ``LIMIT``, and run it after :meth:`apply_search_settings` (docs/integrations.md)."""
        k, _ = check_page(k, 0)
        filters = Filters(tenant, category, price_min, price_max, attributes, where, region_rows=False)  # whole images
        filters.conditions()
        self._context.follow_model_switch()
        asked = queries.Query(text, image, similar_to, similar_to_product, vector)
        query, filters = queries.vector_now(self._context, asked, filters)
        return statements.hnsw_statement(asked.model(self._context), query, filters, k, with_images=True)

    def apply_search_settings(self, connection: Any, k: int = MAX_K, *, tenant: str | None = None) -> None:
        """``SET LOCAL`` the pgvector settings a :meth:`search_select` statement needs, in the caller's
        open transaction: a strict iterative HNSW scan allowed to visit every row, so extra filters never
        make it return fewer rows than exist. ``tenant``: the transaction is restricted to its rows."""
        plans.apply_open_ended(connection, k, tenant=tenant)
