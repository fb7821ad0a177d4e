"""The Catalog: the public entry point for storing and finding product images."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, Select, and_, exists, func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from imgsearch import bulk, checks, hybrid, images, ingest, removal, tenancy, text_requests, updates, vectors
from imgsearch import duplicates as near_duplicates
from imgsearch import search as vector_search
from imgsearch.db import engine as db_engine
from imgsearch.db import filter_indexes, migrate, vector_index
from imgsearch.db.models import Embedding, Image, Product
from imgsearch.embed.registry import canonical_name, model_dim
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, DuplicateImage, InvalidQuery, NotFound
from imgsearch.records import Hit, ImageRecord, ModelInfo
from imgsearch.replicas import Replicas, primary_lsn, replica_fault
from imgsearch.search import MAX_K, Plan
from imgsearch.settings import Settings

if TYPE_CHECKING:
    from imgsearch.embed.model import Embedder
    from imgsearch.wake import Waker

log = logging.getLogger(__name__)

MODEL_REFRESH_SECONDS = 5.0  # how soon an open catalog follows `imgsearch model activate`
GRAPHS_REFRESH_SECONDS = 30.0  # how soon searches plan for a new per-value index (only speed depends on it)


@dataclass(frozen=True)
class _Stored:
    """A query read from the database in the search's transaction: an image's embedding, or a
    product's (tenant from the filters)."""

    image_id: Any = None
    product_id: Any = None


class Catalog:
    """Product images, their embeddings and searches over them, in one PostgreSQL database.

    >>> with Catalog.open() as catalog:                      # doctest: +SKIP
    ...     image_id = catalog.add(image="shoe.jpg", tenant="acme", product_id="sku-1")
    ...     catalog.get(image_id).state
    'pending'
    """

    def __init__(
        self,
        engine: Engine,
        model: ModelInfo,
        settings: Settings,
        waker: Waker | None = None,
        embedder: Embedder | None = None,
        search_engine: Engine | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.engine = engine
        self._search_engine = search_engine or engine
        # hot standbys searches go to first (imgsearch.replicas); None: the primary only
        self.replicas = replicas
        self.settings = settings
        self.waker = waker
        self._model = model
        self._limits = images.Limits(settings.max_image_bytes, settings.max_image_pixels)
        self._embedder: Embedder | None = (
            embedder if embedder is None or embedder.name == model.name else None
        )
        self._model_checked = time.monotonic()
        self._pinned = False  # a catalog of one model (with_model): no following switches
        # values of category/tenant with an HNSW graph of their own (imgsearch.db.filter_indexes)
        self._graphs: dict[str, frozenset[str]] = {}
        self._graphs_key: tuple[int, float] = (-1, float("-inf"))
        self._min_ef = vector_search.MIN_EF_SEARCH  # for the model's graph's size, read with the graphs
        # told the plan of each statement a search runs ("exact", "hnsw", "hnsw_iterative"), e.g.
        # to count strategies in metrics; called on the searching thread
        self.on_search_plan: Callable[[Plan], None] | None = None
        # told of each forward pass of text or image queries (kind, queries in it), likewise
        self.on_query_batch: Callable[[str, int], None] | None = None

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        model: str | None = None,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        replicas: Sequence[str] | None = None,
    ) -> Catalog:
        """Connect, migrate to the latest schema, and make sure an active model is registered.

        ``url`` defaults to ``IMGSEARCH_DATABASE_URL``, else the embedded server (started on demand).
        On a new catalog ``model`` (default ``IMGSEARCH_MODEL``) becomes the active model; its
        dimension is known without loading weights. ``embedder`` shares an already loaded embedder
        of that model for text and image queries. ``replicas`` (default ``IMGSEARCH_REPLICA_URLS``)
        are hot standbys of ``url`` that searches go to, round robin; everything else goes to ``url``.
        """
        settings = settings or Settings()
        engine = db_engine.make_engine(
            url or db_engine.resolve_url(settings), settings.pool_size, settings.lock_timeout_ms
        )
        try:
            if migrate.current(engine) != migrate.head():
                migrate.upgrade(engine)
            with engine.begin() as conn:
                active = vector_index.active_model(conn)
                if active is None:
                    name = canonical_name(model or settings.model)
                    active = vector_index.register_model(conn, name, model_dim(name), activate=True)
        except OperationalError as exc:
            engine.dispose()
            raise DatabaseUnavailable(
                f"database connection failed while opening the catalog: {exc.orig}"
            ) from exc
        except BaseException:
            engine.dispose()
            raise
        if model is not None and canonical_name(model) != active.name:
            engine.dispose()
            raise ConfigurationError(
                f"the catalog's active model is {active.name!r}, not {model!r}; "
                "switch with `imgsearch reembed` and `imgsearch model activate`"
            )
        waker = None
        if settings.wake_workers:
            from imgsearch.wake import celery_waker

            waker = celery_waker(settings.redis_url, settings.queue, settings.batch_size)
        search_engine = db_engine.make_search_engine(engine, settings.pool_size, settings.lock_timeout_ms)
        urls = list(settings.replica_urls if replicas is None else replicas)
        standbys = None
        if urls:
            standbys = Replicas(
                urls,
                pool_size=settings.pool_size,
                lock_timeout_ms=settings.lock_timeout_ms,
                max_lag_seconds=settings.replica_max_lag_seconds,
                wait_seconds=settings.replica_wait_ms / 1000,
            )
        return cls(engine, active, settings, waker, embedder, search_engine, standbys)

    def with_model(self, name: str) -> Catalog:
        """This catalog's searches under another registered model (one ``imgsearch reembed``
        backfilled, not active yet), e.g. to compare the two before ``model activate``. It shares
        this catalog's connections: close this one, not it."""
        with self.engine.connect() as conn:
            model = vector_index.get_model(conn, canonical_name(name))
        if model is None:
            raise NotFound(
                f"no model {name!r} in the catalog; register and backfill it with `imgsearch reembed`"
            )
        pinned = Catalog(self.engine, model, self.settings, None, None, self._search_engine, self.replicas)
        pinned._pinned = True
        return pinned

    def close(self) -> None:
        self.engine.dispose()
        self._search_engine.dispose()
        if self.replicas is not None:
            self.replicas.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string()!r}, model={self.model!r})"

    def _follow_model_switch(self) -> None:
        """Pick up a model switch made elsewhere (checked at most every few seconds): later searches
        and uploads use the new active model, and its embedder."""
        now = time.monotonic()
        if self._pinned or now - self._model_checked < MODEL_REFRESH_SECONDS:
            return
        with self.engine.connect() as conn:
            active = vector_index.active_model(conn)
        self._model_checked = now
        if active is not None and active.id != self._model.id:
            log.info("the catalog's active model is now %s (%d-d)", active.name, active.dim)
            self._model, self._embedder = active, None

    @property
    def search_engine(self) -> Engine:
        """The engine searches run on: a pool of its own whose connections aren't pinged before use
        (:func:`imgsearch.db.engine.make_search_engine`), or :attr:`engine` for a catalog made on
        a given engine."""
        return self._search_engine

    @property
    def model(self) -> str:
        """Name of the active embedding model."""
        return self._model.name

    @property
    def dim(self) -> int:
        """Dimension of the active model's embeddings."""
        return self._model.dim

    @property
    def limits(self) -> images.Limits:
        """The byte and pixel limits of uploaded images."""
        return self._limits

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
        on_duplicate: near_duplicates.OnDuplicate = "keep",
    ) -> int:
        """Store one image (a path, bytes, a binary file object or an http(s) URL) and return its id.

        Without ``embedding`` the image is committed as ``pending`` for the workers to embed;
        with one (a sequence of ``catalog.dim`` numbers) it is stored as ``ready``. The same bytes
        uploaded again by the same tenant return the existing image's id.

        ``on_duplicate``: what to do with a near-copy of an image of *another* product of the tenant
        (:mod:`imgsearch.duplicates`): ``"keep"`` stores it as any upload; ``"link"`` stores it with
        ``duplicate_of`` set to that image; ``"reject"`` raises :class:`DuplicateImage` and writes
        nothing. Checking needs the bytes (not a URL); a near-copy found is embedded at once.
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
        return self.add_row(row, on_duplicate=on_duplicate)[0]

    def add_row(
        self, row: Mapping[str, Any], *, on_duplicate: near_duplicates.OnDuplicate = "keep"
    ) -> tuple[int, bool]:
        """:meth:`add` for a row dict (the keys of :meth:`add_many`); also says whether the image
        was new (False: the same bytes were already stored for that tenant)."""
        near_duplicates.check_policy(on_duplicate)
        self._follow_model_switch()
        prepared = ingest.prepare_row(row, dim=self.dim, limits=self._limits)
        self._check_checkable([prepared], on_duplicate, batch=False)
        with self.engine.begin() as conn:
            tenancy.scope(conn, prepared.tenant)
            links = self._check_duplicates(conn, prepared.tenant, [prepared], [0], on_duplicate, batch=False)
            ids, created = ingest.write_rows(conn, [prepared], self._model)
            ingest.link_rows(conn, links, ids)
        self._wake([prepared], created)  # after the commit: the row is durable before anyone hears of it
        return ids[0], created[0]

    def _check_checkable(self, rows: list[ingest.PreparedRow], on_duplicate: str, *, batch: bool) -> None:
        if on_duplicate == "keep":
            return
        for index, row in enumerate(rows):
            if row.uri is not None:
                raise InvalidQuery(
                    f"on_duplicate={on_duplicate!r} needs the image's bytes, and this upload is a URL "
                    "that a worker fetches later; upload the bytes, or find copies afterwards with "
                    "`imgsearch duplicates`"
                ).at_row(index if batch else None, None if batch else "upload")

    def _check_duplicates(
        self,
        conn: Any,
        tenant: str,
        rows: list[ingest.PreparedRow],
        positions: list[int],
        on_duplicate: str,
        *,
        batch: bool,
    ) -> list[tuple[int, int]]:
        """Apply ``on_duplicate`` to rows of one tenant (inside the write's transaction): raise for
        a rejected copy (naming its row when the call is a batch), set ``duplicate_of`` for a
        linked one. Returns the links to rows of this call, (row, row it copies), to set once both
        have ids; a copy embedded by the check keeps its embedding and is stored ready."""
        if on_duplicate == "keep":
            return []
        uploads = [near_duplicates.Upload(r.product_id, r.phash, r.content, r.embedding) for r in rows]
        matches = near_duplicates.find(
            conn,
            tenant,
            uploads,
            self._model,
            lambda datas: list(self.embedder.embed_images(datas)),
            max_hamming=self.settings.duplicate_max_hamming,
            max_distance=self.settings.duplicate_max_distance,
        )
        links: list[tuple[int, int]] = []
        for i, (row, upload, match) in enumerate(zip(rows, uploads, matches, strict=True)):
            if row.embedding is None and upload.embedding is not None:
                row.embedding = vectors.as_vector(upload.embedding, self.dim)
            if match is None:
                continue
            if on_duplicate == "reject":
                if match.row is not None:
                    match = replace(match, row=positions[match.row])
                error = DuplicateImage(
                    f"the image is {match.describe()}; nothing was written (on_duplicate='reject')",
                    image_id=match.image_id,
                    product_id=match.product_id,
                    hamming=match.hamming,
                    distance=match.distance,
                    row=match.row,
                )
                raise error.at_row(positions[i]) if batch else error
            if match.image_id is not None:
                row.duplicate_of = match.image_id
            elif match.row is not None:
                links.append((i, match.row))
        return links

    def duplicates(
        self,
        tenant: str,
        *,
        max_hamming: int | None = None,
        max_distance: float | near_duplicates.Unset | None = near_duplicates.UNSET,
        progress: bool | None = None,
    ) -> near_duplicates.Report:
        """Groups of near-identical images of different products of ``tenant``: every pair of its
        images within ``max_hamming`` bits of perceptual hash (default
        ``IMGSEARCH_DUPLICATE_MAX_HAMMING``), confirmed by an embedding distance of at most
        ``max_distance`` (default ``IMGSEARCH_DUPLICATE_MAX_DISTANCE``; None: the hash alone).
        Images uploaded before hashes existed are hashed first, from their bytes or thumbnail."""
        from tqdm import tqdm

        hamming, distance = near_duplicates.check_limits(
            self.settings.duplicate_max_hamming if max_hamming is None else max_hamming,
            self.settings.duplicate_max_distance
            if isinstance(max_distance, near_duplicates.Unset)
            else max_distance,
        )
        show = sys.stderr.isatty() if progress is None else progress
        self._follow_model_switch()
        bars: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", disable=not show)
            bar.update(done - bar.n)

        try:
            with self.engine.begin() as conn:
                tenancy.scope(conn, checks.identifier(tenant, "tenant"))
                return near_duplicates.sweep(
                    conn,
                    self._model,
                    self._limits,
                    max_hamming=hamming,
                    max_distance=distance,
                    progress=on_progress,
                )
        finally:
            for bar in bars.values():
                bar.close()

    def add_many(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        progress: bool | None = None,
        on_duplicate: near_duplicates.OnDuplicate = "keep",
    ) -> list[int]:
        """Store many uploads atomically: every row is validated first, and one bad row fails the
        call (its index in the message) with nothing written. Returns ids in row order.

        ``progress`` shows a progress bar; by default only when stderr is a terminal.
        ``on_duplicate`` as in :meth:`add`; rows of this call count as stored for each other.
        """
        from tqdm import tqdm

        near_duplicates.check_policy(on_duplicate)
        show = sys.stderr.isatty() if progress is None else progress
        self._follow_model_switch()
        rows = list(rows)
        prepared = ingest.prepare_rows(
            tqdm(rows, desc="checking", unit="row", disable=not show), dim=self.dim, limits=self._limits
        )
        self._check_checkable(prepared, on_duplicate, batch=True)
        ids: list[int] = [0] * len(prepared)
        created_all = [False] * len(prepared)
        by_tenant: dict[str, list[int]] = {}
        for position, row_ in enumerate(prepared):
            by_tenant.setdefault(row_.tenant, []).append(position)
        # one transaction; each tenant's rows are written under that tenant's row-level security
        with (
            self.engine.begin() as conn,
            tqdm(total=len(prepared), desc="writing", unit="row", disable=not show) as bar,
        ):
            for tenant, positions in by_tenant.items():
                tenancy.scope(conn, tenant)
                links = self._check_duplicates(
                    conn, tenant, [prepared[p] for p in positions], positions, on_duplicate, batch=True
                )
                for start in range(0, len(positions), ingest.WRITE_CHUNK):
                    part = positions[start : start + ingest.WRITE_CHUNK]
                    chunk_ids, created = ingest.write_rows(conn, [prepared[p] for p in part], self._model)
                    for position, image_id, new in zip(part, chunk_ids, created, strict=True):
                        ids[position] = image_id
                        created_all[position] = new
                    bar.update(len(part))
                ingest.link_rows(conn, links, [ids[p] for p in positions])
        self._wake(prepared, created_all)
        return ids

    def import_vectors(
        self,
        source: Any,
        *,
        tenant: str | None = None,
        metadata: Any = None,
        progress: bool | None = None,
        rebuild_index: bool | None = None,
        maintenance_work_mem: str | None = None,
        parallel_workers: int | None = None,
    ) -> int:
        """Bulk import of existing embeddings (a migration from another system); the number of
        images imported. ``source`` is a path (Parquet; ``.npy`` with ``metadata``, a CSV or JSONL
        of its rows; JSON Lines with ``embedding``) or an iterable of row dicts as
        :meth:`add_many` takes, each with an ``embedding``. ``tenant`` for rows that name none.

        Every row is checked as :meth:`add_many` checks it, then all are made visible in one
        transaction; a bad row fails the import naming its file and row, nothing visible. Rows
        whose content the tenant has already are skipped (run an interrupted import again). An
        import that at least doubles the model's index builds it afresh after the load
        (:mod:`imgsearch.bulk`); searches keep working meanwhile.

        >>> catalog.import_vectors("catalog.parquet", tenant="acme")  # doctest: +SKIP
        1000000
        """
        return self.import_report(
            source,
            tenant=tenant,
            metadata=metadata,
            progress=progress,
            rebuild_index=rebuild_index,
            maintenance_work_mem=maintenance_work_mem,
            parallel_workers=parallel_workers,
        ).imported

    def import_report(
        self,
        source: Any,
        *,
        tenant: str | None = None,
        metadata: Any = None,
        progress: bool | None = None,
        rebuild_index: bool | None = None,
        maintenance_work_mem: str | None = None,
        parallel_workers: int | None = None,
    ) -> bulk.ImportResult:
        """:meth:`import_vectors`, telling what happened: rows read, imported, duplicates, whether
        the index was rebuilt and with which settings, and how long each step took."""
        import os

        from imgsearch import vector_files

        self._follow_model_switch()
        if isinstance(source, str | os.PathLike):
            rows = vector_files.read(source, metadata=metadata)
        else:
            if metadata is not None:
                raise InvalidQuery("metadata goes with a .npy file: give its path as the source")
            rows = ((f"row {i}", row) for i, row in enumerate(source))
        return bulk.import_rows(
            self.engine,
            self._model,
            rows,
            limits=self._limits,
            tenant=tenant,
            rebuild_index=rebuild_index,
            maintenance_work_mem=maintenance_work_mem,
            parallel_workers=parallel_workers,
            progress=sys.stderr.isatty() if progress is None else progress,
        )

    def index_filter_values(
        self, column: str, min_rows: int | None, *, progress: bool | None = None
    ) -> filter_indexes.RefreshResult:
        """Give each value of ``column`` (``"category"`` or ``"tenant"``) with ``min_rows`` rows or
        more an HNSW index of its own, so a search filtered to it can be an unfiltered search of a
        graph of its rows (:mod:`imgsearch.db.filter_indexes`); ``min_rows=None`` drops them. Each
        index's recall is checked at its build against an exact search of its rows, and searches
        use it only from 0.98 up. The rule is kept: :meth:`refresh_filter_indexes`, imports and the
        workers' sweep follow it as values grow and shrink. Builds run ``CONCURRENTLY``: searches
        and uploads go on.

        >>> catalog.index_filter_values("category", 10_000)  # doctest: +SKIP
        """
        with self.engine.begin() as conn:
            filter_indexes.set_rule(conn, column, min_rows)
        return self.refresh_filter_indexes(progress=progress)

    def refresh_filter_indexes(self, *, progress: bool | None = None) -> filter_indexes.RefreshResult:
        """Build and drop per-value indexes as their rules and the values' rows say now."""
        from tqdm import tqdm

        self._follow_model_switch()
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(desc="indexing values", unit="index", disable=not show) as bar:

            def on_build(column: str, value: str, done: int, total: int) -> None:
                bar.total = total
                bar.set_postfix_str(f"{column} {value}"[:40], refresh=False)
                bar.update(done - bar.n)

            result = filter_indexes.refresh(self.engine, self._model, on_build=on_build)
        self._graphs_key = (-1, float("-inf"))  # read the new set at the next search
        return result

    def filter_graphs(self) -> list[filter_indexes.Graph]:
        """The per-value indexes of the active model, with their rows and size."""
        self._follow_model_switch()
        with self.engine.connect() as conn:
            return filter_indexes.graphs(conn, self._model.id)

    def _wake(self, rows: list[ingest.PreparedRow], created: list[bool]) -> None:
        pending = sum(1 for row, new in zip(rows, created, strict=True) if new and row.embedding is None)
        if pending and self.waker is not None:
            self.waker(pending)

    def update_product(self, product_id: str, *, tenant: str, **fields: Any) -> bool:
        """Set fields of one product without uploading its images again: any of ``category``,
        ``price``, ``currency`` (``None`` clears them) and ``attributes`` (replaces the document;
        re-uploading merges it instead). Searches filter on the new values at once.

        Returns whether a value changed; :class:`NotFound` when ``tenant`` has no such product.

        >>> catalog.update_product("sku-1", tenant="acme", price=39.9)  # doctest: +SKIP
        """
        change = updates.prepare({"tenant": tenant, "product_id": product_id, **fields})
        with self.engine.begin() as conn:
            return updates.apply(conn, [change]) == 1

    def update_products(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        progress: bool | None = None,
        names: Sequence[str] | None = None,
    ) -> int:
        """:meth:`update_product` for many products (a price feed), all or nothing: every row
        (``tenant``, ``product_id`` and the fields to set) is checked first, one bad row or
        unknown product fails the call with its index and nothing is written. Returns how many
        products changed; rows that repeat stored values write nothing.

        ``progress`` shows a progress bar; by default only when stderr is a terminal. ``names``
        (one per row) replaces ``"row i"`` in errors, e.g. with the row's file and line.
        """
        from tqdm import tqdm

        changes = updates.prepare_all(rows, names)
        if not changes:
            return 0
        show = sys.stderr.isatty() if progress is None else progress
        with (
            self.engine.begin() as conn,
            tqdm(total=len(changes), desc="updating", unit="product", disable=not show) as bar,
        ):
            return updates.apply(conn, changes, progress=bar.update)

    # -- read -----------------------------------------------------------------------------

    def get(self, image_id: int, *, tenant: str | None = None) -> ImageRecord:
        """The stored state and metadata of one image; :class:`NotFound` if there is none.

        With ``tenant``, another tenant's image is indistinguishable from a missing one.
        """
        if not checks.stored_id(image_id):
            raise NotFound(f"no image with id {image_id!r}")
        self._follow_model_switch()
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
                Image.phash,
                Image.duplicate_of,
            )
            .join(Product, Product.id == Image.product_pk)
            .where(Image.id == image_id)
        )
        with self.engine.begin() as conn:
            if tenant is not None:
                tenancy.scope(conn, tenant)
            row = conn.execute(stmt).first()
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        values = row._asdict()
        values["sha256"] = values["sha256"].hex() if values["sha256"] else None
        values["attributes"] = dict(values["attributes"])
        return ImageRecord(**values)

    def image_content(self, image_id: int, *, tenant: str | None = None) -> bytes | None:
        """The bytes stored for an image, or None for one uploaded by URL (workers download it and
        keep only its embedding); :class:`NotFound` when there is no such image (of ``tenant``)."""
        if not checks.stored_id(image_id):
            raise NotFound(f"no image with id {image_id!r}")
        with self.engine.begin() as conn:
            if tenant is not None:
                tenancy.scope(conn, tenant)
            row = conn.execute(select(Image.content).where(Image.id == image_id)).first()
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return None if row.content is None else bytes(row.content)

    def image_preview(self, image_id: int, *, tenant: str | None = None) -> bytes | None:
        """An image to show: its stored bytes, or the thumbnail kept when they were dropped after
        embedding (``IMGSEARCH_KEEP_CONTENT=false``); None for one uploaded by URL or imported as
        an embedding only. :class:`NotFound` as :meth:`image_content`."""
        if not checks.stored_id(image_id):
            raise NotFound(f"no image with id {image_id!r}")
        with self.engine.begin() as conn:
            if tenant is not None:
                tenancy.scope(conn, tenant)
            row = conn.execute(
                select(func.coalesce(Image.content, Image.thumbnail).label("shown")).where(
                    Image.id == image_id
                )
            ).first()
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return None if row.shown is None else bytes(row.shown)

    def categories(self, *, tenant: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        """The categories of the catalog's products (of ``tenant``'s, with a tenant) and how many
        products each has, most products first; at most ``limit``.

        >>> catalog.categories(tenant="acme")  # doctest: +SKIP
        [('shoes', 120), ('bags', 31)]
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidQuery(f"limit must be an integer from 1 to 10000, got {limit!r}")
        count = func.count().label("products")
        stmt = (
            select(Product.category, count)
            .where(Product.category.is_not(None))
            .group_by(Product.category)
            .order_by(count.desc(), Product.category)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            if tenant is not None:
                tenancy.scope(conn, tenant)
            return [(row.category, int(row.products)) for row in conn.execute(stmt)]

    def delete(self, image_id: int, *, tenant: str | None = None) -> None:
        """Delete one image and its embeddings; :class:`NotFound` if there is none (with
        ``tenant``, none of that tenant's). Its product stays, with its other images."""
        removal.delete_images(self.engine, [image_id], tenant=tenant)

    def delete_many(self, image_ids: Iterable[int], *, tenant: str | None = None) -> int:
        """Delete every image of ``image_ids`` in one transaction, or none when one of them is
        :class:`NotFound`; the number deleted."""
        return removal.delete_images(self.engine, image_ids, tenant=tenant)

    def delete_product(self, product_id: str, *, tenant: str) -> int:
        """Delete a product with all its images and their embeddings; the number of images.
        :class:`NotFound` when ``tenant`` has no such product."""
        return removal.delete_product(self.engine, product_id, tenant=tenant)

    # -- search ---------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The active model's embedder, created on first use; weights load on the first text or image
        query (searching by vector or by image id never loads them)."""
        if self._embedder is None:
            from imgsearch.embed.model import Embedder

            self._embedder = Embedder.from_settings(self.settings, name=self.model)
            if self.on_query_batch is not None:
                self._embedder.on_query_batch(self.on_query_batch)
        return self._embedder

    def search(
        self,
        *,
        text: str | None = None,
        image: Any = None,
        similar_to: int | None = None,
        similar_to_product: str | None = None,
        vector: Any = None,
        tenant: str | None = None,
        category: str | list[str] | None = None,
        price_min: Any = None,
        price_max: Any = None,
        attributes: dict[str, Any] | None = None,
        where: Any = None,
        k: int = 10,
        offset: int = 0,
        group_by_product: bool = False,
        diversity: float | None = None,
        expand: int | None = None,
        min_score: float | None = None,
        min_probability: float | None = None,
        consistent: bool = False,
        box: Sequence[float] | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest images (after ``offset``) matching every filter, nearest first.

        Give exactly one query: ``text`` (text to image), ``image`` (a path, bytes, a binary file
        object or an http(s) URL, downloaded as workers download uploads: public addresses only
        unless ``IMGSEARCH_DOWNLOAD_ALLOW`` lists the network),
        ``similar_to`` (an image id: "more like this image", the image itself left out),
        ``similar_to_product`` (a product id of ``tenant``: "more like this item", the mean of its
        images' embeddings, all of its images left out) or ``vector``.
        Filters: ``tenant``, ``category`` (one or a list), ``price_min``/``price_max``,
        ``attributes`` (JSONB containment) and ``where`` (any SQLAlchemy expression over
        :mod:`imgsearch.db.models`). Returns ``min(k, matching rows)`` hits.

        ``group_by_product`` keeps the best image per product; ``diversity=λ`` re-ranks with MMR
        (1 = relevance only); ``expand=m`` searches again with the query averaged with its top m;
        ``min_score`` drops hits below that cosine similarity, ``min_probability`` (text queries
        on SigLIP) below that calibrated match probability.

        ``box=(x0, y0, x1, y1)`` (pixels of ``image``) searches with that region of the query image
        only: a detail of a photo, as a shopper draws around it.

        With replicas, the search runs on one of them and may miss the last writes they haven't
        replayed yet; ``consistent=True`` waits until the replica has replayed every write
        acknowledged before the search started (up to ``IMGSEARCH_REPLICA_WAIT_MS``, else the
        primary answers).

        >>> catalog.search(text="red sneakers", tenant="acme", price_max=100, k=5)  # doctest: +SKIP
        """
        k, offset = vector_search.check_page(k, offset)
        if min_probability is not None:
            if text is None:
                raise InvalidQuery("min_probability applies to text queries only")
            if isinstance(min_probability, bool) or not (
                isinstance(min_probability, int | float) and 0 <= min_probability <= 1
            ):
                raise InvalidQuery(
                    f"min_probability must be a probability from 0 to 1, got {min_probability!r}"
                )
        options = hybrid.Options(
            k=k,
            offset=offset,
            group_by_product=group_by_product,
            diversity=diversity,
            expand=expand,
            min_score=min_score,
            exact_max_rows=self.settings.exact_max_rows,
            exact_max_fraction=self.settings.exact_max_fraction,
            cached_plans=self.settings.cached_plans,
            on_plan=self.on_search_plan,
        )
        options.check()
        filters = vector_search.Filters(tenant, category, price_min, price_max, attributes, where)
        filters.conditions()  # check the filters before any model work
        self._follow_model_switch()
        if box is not None and image is None:
            raise InvalidQuery("box applies to image queries only")
        query = self._query_vector(
            filters,
            text=text,
            image=image,
            similar_to=similar_to,
            similar_to_product=similar_to_product,
            vector=vector,
            box=box,
        )
        if not isinstance(consistent, bool):
            raise InvalidQuery(f"consistent must be true or false, got {consistent!r}")
        stored = _Stored(similar_to, similar_to_product)
        hits = self._search_replicas(tenant, filters, options, query, stored, consistent)
        if hits is None:
            try:
                hits = self._search_once(self._search_engine, tenant, filters, options, query, stored)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # searches check out connections without a ping (db_engine.make_search_engine): a
                # search is read-only, so it runs again on a new connection
                log.warning("a search's database connection was closed (%s); running it again", exc.orig)
                hits = self._search_once(self._search_engine, tenant, filters, options, query, stored)
        assert hits is not None  # only a replica that hasn't caught up answers None
        if text is not None:
            hits = hybrid.with_probability(hits, self.embedder.probability)
            if min_probability is not None:
                hits = [hit for hit in hits if hit.probability is None or hit.probability >= min_probability]
        return hits

    def _search_replicas(
        self,
        tenant: str | None,
        filters: vector_search.Filters,
        options: hybrid.Options,
        query: vectors.Vector | None,
        stored: _Stored,
        consistent: bool,
    ) -> list[Hit] | None:
        """The search on the next healthy replica; None when the primary must answer: no replica
        in rotation, each one failed, or (``consistent``) the chosen one didn't catch up in time.
        A replica that can't answer (down, restarting, a query cancelled by recovery) costs no
        failed search: the next one, then the primary, runs it."""
        if not self.replicas:
            return None
        lsn = None
        if consistent:
            with self.engine.begin() as conn:
                lsn = primary_lsn(conn)
        for member in self.replicas.rotation():
            try:
                hits = self._search_once(member.engine, tenant, filters, options, query, stored, lsn)
            except DBAPIError as exc:
                if not replica_fault(exc):
                    raise
                self.replicas.failed(member, exc)
                continue
            if hits is None:
                log.info(
                    "replica %s hadn't replayed %s within the wait; the primary answers", member.name, lsn
                )
                return None
            member.searches += 1
            return hits
        return None

    def _search_once(
        self,
        engine: Engine,
        tenant: str | None,
        filters: vector_search.Filters,
        options: hybrid.Options,
        query: vectors.Vector | None,
        stored: _Stored,
        lsn: str | None = None,
    ) -> list[Hit] | None:
        own = self._own_graph(filters)  # before the search's transaction (Django shares one connection)
        options = replace(options, min_ef=self._min_ef)
        with engine.begin() as conn:
            if lsn is not None and self.replicas is not None and not self.replicas.wait_for(conn, lsn):
                return None
            if tenant is not None:
                tenancy.scope(conn, tenant)
            if query is None:
                query, filters = self._similar(conn, stored, filters)
            if own:
                # the planner picks a value's partial index only when it plans for the value
                options = replace(options, cached_plans=False, per_value=own == "per value")
            return hybrid.run(conn, self._model, query, filters, options)

    def _own_graph(self, filters: vector_search.Filters) -> str | None:
        """'single': the filter's category or tenant has an HNSW index of its own; "per value":
        each category of its list has one; else None (known values are read every
        :data:`GRAPHS_REFRESH_SECONDS`, with the size of the model's graph, which sets the
        searches' least ``ef_search``)."""
        model_id, checked = self._graphs_key
        now = time.monotonic()
        if model_id != self._model.id or now - checked >= GRAPHS_REFRESH_SECONDS:
            try:
                # begin(): committed, not rolled back on return to the pool (psycopg drops the
                # connection's prepared statements at a ROLLBACK)
                with self.engine.begin() as conn:
                    self._min_ef = vector_search.min_ef_search(
                        vector_index.indexed_rows(conn, self._model.id)
                    )
                    self._graphs = filter_indexes.indexed_values(conn, self._model.id)
            except DBAPIError as exc:  # a login that can't read the registry: no per-value plans
                log.debug("per-value indexes not readable: %s", exc.orig)
                self._graphs = {}
            self._graphs_key = (self._model.id, now)
        if not self._graphs:
            return None
        categories = filters.value("categories")
        if categories and set(categories) <= self._graphs.get("category", frozenset()):
            return "per value"
        if any(filters.value(column) in self._graphs.get(column, ()) for column in filter_indexes.COLUMNS):
            return "single"
        return None

    def search_select(
        self,
        *,
        text: str | None = None,
        image: Any = None,
        similar_to: int | None = None,
        similar_to_product: str | None = None,
        vector: Any = None,
        tenant: str | None = None,
        category: str | list[str] | None = None,
        price_min: Any = None,
        price_max: Any = None,
        attributes: dict[str, Any] | None = None,
        where: Any = None,
        k: int = 10,
    ) -> Select[Any]:
        """The same hybrid search as a composable SQLAlchemy ``Select`` for ORM apps.

        Its columns are ``image_id, product_id, tenant, category, price, distance`` over
        ``imgsearch.embeddings`` joined to ``images`` and ``products``; add joins, columns and
        ``where`` clauses, but keep its ``ORDER BY`` (the indexed distance, nothing after it) and
        ``LIMIT``. Run it in a transaction after :meth:`apply_search_settings`::

            stmt = catalog.search_select(text="red shoes", tenant="acme", k=20).join(Stock, ...)
            with Session(engine) as session, session.begin():
                catalog.apply_search_settings(session.connection())
                rows = session.execute(stmt).all()
        """
        k, _ = vector_search.check_page(k, 0)
        filters = vector_search.Filters(tenant, category, price_min, price_max, attributes, where)
        filters.conditions()
        self._follow_model_switch()
        query = self._query_vector(
            filters,
            text=text,
            image=image,
            similar_to=similar_to,
            similar_to_product=similar_to_product,
            vector=vector,
        )
        if query is None:
            with self.engine.connect() as conn:
                query, filters = self._similar(conn, _Stored(similar_to, similar_to_product), filters)
        return vector_search.hnsw_statement(self._model, query, filters, k, with_images=True)

    def apply_search_settings(self, connection: Any, k: int = MAX_K, *, tenant: str | None = None) -> None:
        """``SET LOCAL`` the pgvector settings a :meth:`search_select` statement needs, in the
        caller's open transaction: a strict iterative HNSW scan allowed to visit every row, so extra
        filters never make it return fewer rows than exist. With ``tenant``, the transaction is also
        restricted to that tenant's rows by row-level security."""
        if tenant is not None:
            tenancy.scope(connection, tenant)
        vector_search.planner_settings(connection)
        vector_search.set_local(connection, vector_search.open_ended_plan(connection, k))

    def _query_vector(
        self,
        filters: vector_search.Filters,
        *,
        text: str | None,
        image: Any,
        similar_to: Any,
        similar_to_product: Any,
        vector: Any,
        box: Sequence[float] | None = None,
    ) -> vectors.Vector | None:
        """The query vector of exactly one query kind, before any connection is taken (a text or
        image query's forward pass takes tens of ms on a CPU); None for ``similar_to`` and
        ``similar_to_product``, whose vectors are read in the search's own transaction
        (:meth:`_similar`)."""
        queries = {
            "text": text,
            "image": image,
            "similar_to": similar_to,
            "similar_to_product": similar_to_product,
            "vector": vector,
        }
        given = [name for name, value in queries.items() if value is not None]
        if len(given) != 1:
            raise InvalidQuery(f"give exactly one query of {sorted(queries)}, got {given or 'none'}")
        if similar_to_product is not None and filters.tenant_name() is None:
            raise InvalidQuery("similar_to_product needs tenant=: product ids name products within a tenant")
        if text is not None:
            return self._text_vector(text)
        if image is not None:
            if images.is_url(image):
                data = self.settings.downloads().fetch(
                    checks.url(str(image), "query image URL", InvalidQuery)
                )
            else:
                data = images.read_source(image, self._limits)
            if box is not None:
                data = images.crop(data, box, self._limits)
            return self.embedder.embed_image(data)
        if vector is not None:
            return vectors.as_vector(vector, self.dim, "query vector")
        return None

    def _text_vector(self, query: str) -> vectors.Vector:
        """A text query's vector: from this process's text cache, else from the catalog's
        (``imgsearch.text_embeddings``, which workers fill for ``imgsearch.search_text``), else
        embedded here and put in both. The catalog's cache is a convenience: when it can't be read
        or written, the text is embedded here as before."""
        embedder = self.embedder
        row = embedder.cached_text(query)
        if row is not None:
            return row
        model_id = self._model.id
        try:
            with self.engine.begin() as conn:
                shared = text_requests.cached(conn, model_id, query)
        except DBAPIError as exc:
            log.debug("text cache not readable: %s", exc.orig)
            shared = None
        if shared is not None and len(shared.vector) == self.dim:
            embedder.remember_text(query, shared.vector)
            return shared.vector
        row = embedder.embed_text(query)
        try:
            with self.engine.begin() as conn, conn.begin_nested():  # a savepoint: a refusal ends here
                text_requests.store(conn, model_id, [(query, row)], embedder.logit_params())
        except DBAPIError as exc:
            log.debug("text cache not writable: %s", exc.orig)
        return row

    def _similar(
        self, conn: Any, stored: _Stored, filters: vector_search.Filters
    ) -> tuple[vectors.Vector, vector_search.Filters]:
        """A query read from the database: an image's embedding, the image left out of the hits;
        or a product's (the mean of its images'), all of its images left out."""
        tenant = filters.tenant_name()
        if stored.product_id is None:
            query = self._embedding_of(conn, stored.image_id, tenant)
            return query, replace(filters, exclude_image=stored.image_id)
        assert tenant is not None  # _query_vector checked
        product_id = checks.identifier(stored.product_id, "similar_to_product", InvalidQuery)
        rows = conn.execute(
            select(Product.id, Embedding.embedding)
            .select_from(Product)
            .outerjoin(
                Embedding, and_(Embedding.product_pk == Product.id, Embedding.model_id == self._model.id)
            )
            .where(Product.tenant == tenant, Product.product_id == product_id)
        ).all()
        if not rows:
            raise NotFound(f"tenant {tenant!r} has no product {product_id!r}")
        embedded = [vectors.as_vector(row.embedding, self.dim) for row in rows if row.embedding is not None]
        if not embedded:
            raise NotFound(f"product {product_id!r} of tenant {tenant!r} has no embedded image yet")
        query = vectors.as_vector(
            np.mean(embedded, axis=0), self.dim, f"the mean of product {product_id!r}'s images"
        )
        return query, replace(filters, exclude_product=rows[0].id)

    def _embedding_of(self, conn: Any, image_id: Any, tenant: str | None) -> vectors.Vector:
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise InvalidQuery(f"similar_to must be an image id (an integer), got {image_id!r}")
        if not checks.stored_id(image_id):
            raise NotFound(f"no embedded image with id {image_id}")
        stmt = select(Embedding.embedding).where(
            Embedding.image_id == image_id, Embedding.model_id == self._model.id
        )
        if tenant is not None:
            stmt = stmt.where(Embedding.tenant == tenant)
        found = conn.execute(stmt).first()
        if found is None:
            raise NotFound(f"no embedded image with id {image_id}")
        return vectors.as_vector(found[0], self.dim)
