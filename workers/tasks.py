"""Tasks: ``imgsearch.embed_pending`` (claim, embed, store one batch) and ``imgsearch.sweep``."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import psycopg
from celery.signals import worker_process_init
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import DBAPIError

from imgsearch.db import engine as db_engine
from imgsearch.db import filter_indexes, vector_index
from imgsearch.embed.active import configured_model, open_model, register
from imgsearch.embed.allocator import retain_freed_memory
from imgsearch.embed.model import Embedder, check_text
from imgsearch.errors import ImgSearchError, TransientError
from imgsearch.hooks.delivery import Deliverer
from imgsearch.learning import boosts
from imgsearch.records import ModelInfo
from imgsearch.settings import Settings
from imgsearch.work import pipeline, queue, text_requests
from workers.app import app

log = logging.getLogger(__name__)

MAX_FANOUT = 8  # tasks a sweep enqueues at most; each re-queues itself while work remains
TASK_TIME_BUDGET_SECONDS = 120.0  # then the task re-queues itself, so other messages get a turn


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    model: ModelInfo  # perhaps not registered yet: it is at the first batch (imgsearch.embed.active)
    embedder: Embedder | None  # None for a model whose vectors come from elsewhere
    image_embedder: Embedder | None = None  # the model serving image queries beside the active one

    def image_embedder_for(self, model: ModelInfo) -> Embedder:
        """The embedder of the model that serves image queries, loaded once per switch to it."""
        if self.image_embedder is None or self.image_embedder.name != model.name:
            self.image_embedder = Embedder.from_settings(self.settings, name=model.name)
        return self.image_embedder


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    """Settings, engine, active model and embedder: created once per worker process, on first use
    (after the fork, so no connection or model is shared between processes)."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = Settings()
            engine = db_engine.make_engine(db_engine.resolve_url(settings))
            model = open_model(engine, configured_model(settings), settings.model, strict=False)
            retain_freed_memory(settings)
            if settings.torch_threads:
                import torch

                torch.set_num_threads(settings.torch_threads)
            _runtime = Runtime(settings, engine, model, _loaded(settings, model))
        return _runtime


def _loaded(settings: Settings, model: ModelInfo) -> Embedder | None:
    if model.external:
        log.info("the catalog's model %s embeds nothing here: its vectors come from elsewhere", model.name)
        return None
    embedder = Embedder.from_settings(settings, name=model.name)
    embedder.load()
    import torch

    log.info(
        "embedder %s on %s (%s, %s), %d torch threads",
        model.name,
        embedder.device,
        embedder.runtime,
        embedder.dtype,
        torch.get_num_threads(),
    )
    return embedder


def follow_active_model(rt: Runtime) -> None:
    """Load the new active model's embedder when the catalog switched models since the last task."""
    model = open_model(rt.engine, configured_model(rt.settings), rt.settings.model, strict=False)
    if model.name == rt.model.name and model.id == rt.model.id:
        return
    if model.name != rt.model.name:
        log.info("active model switched from %s to %s", rt.model.name, model.name)
        rt.embedder = _loaded(rt.settings, model)
    rt.model = model


def _ready_to_embed(rt: Runtime) -> bool:
    """Whether pending images can be embedded now: the model registered at the first batch of a new
    catalog, and one imgsearch loads."""
    if not queue.claimable_count(rt.engine):
        return False
    if not rt.model.registered:
        follow = register(rt.engine, rt.model)
        if follow.name != rt.model.name:
            rt.embedder = _loaded(rt.settings, follow)
        rt.model = follow
    if rt.embedder is None:
        log.warning(pipeline.external_waiting(rt.model, queue.claimable_count(rt.engine)))
        return False
    return True


def embed_batches(rt: Runtime) -> queue.BatchResult:
    follow_active_model(rt)
    if not _ready_to_embed(rt):
        return queue.BatchResult()
    assert rt.embedder is not None
    also = pipeline.image_model_beside(rt.engine, rt.model, rt.image_embedder_for)
    return pipeline.run(
        rt.engine,
        rt.model,
        rt.embedder,
        also=also,
        batch_size=rt.settings.batch_size,
        lease_seconds=rt.settings.lease_seconds,
        downloads=rt.settings.downloads(),
        time_budget_seconds=TASK_TIME_BUDGET_SECONDS,
        keep_content=rt.settings.keep_content,
    )


@app.task(
    name="imgsearch.embed_pending",
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def embed_pending(self: Any) -> dict[str, int]:
    """Embed pending images batch after batch (the next batch decoding while the model runs) for up
    to a time budget; re-queue while the last batch came back full."""
    rt = runtime()
    result = embed_batches(rt)
    if result.last_batch_full:
        embed_pending.apply_async()
    if result.claimed:
        log.info(
            "batch: %d claimed, %d ready, %d failed, %d lost",
            result.claimed,
            result.ready,
            result.failed,
            result.lost,
        )
    return {"claimed": result.claimed, "ready": result.ready, "failed": result.failed, "lost": result.lost}


@app.task(name="imgsearch.sweep")
def sweep() -> int:
    """Re-queue work PostgreSQL holds but Redis may have lost (flushed broker, killed worker)."""
    rt = runtime()
    claimable = queue.claimable_count(rt.engine)
    tasks = min(MAX_FANOUT, math.ceil(claimable / rt.settings.batch_size))
    for _ in range(tasks):
        embed_pending.apply_async()
    if tasks:
        log.info("sweep: %d claimable images, %d tasks queued", claimable, tasks)
    # categories and tenants that grew past their rule get an HNSW index of their own (at most
    # one refresh runs at a time; a sweep finding one running leaves it to it)
    try:
        with rt.engine.connect() as conn:
            model = vector_index.active_model(conn)
            ruled = bool(filter_indexes.rules(conn)) or bool(
                model and filter_indexes.indexed_values(conn, model.id)
            )
        if model is not None and ruled:
            filter_indexes.refresh(rt.engine, model, wait=False)
    except (DBAPIError, psycopg.Error, ImgSearchError) as exc:
        # e.g. a worker login without rights on the registry, or a build cut off: searches still
        # work, on the model's graph
        log.warning("sweep: per-value indexes not refreshed: %s", exc)
    return tasks


_feedback_engine: Engine | None = None


@app.task(name="imgsearch.refresh_boosts")
def refresh_boosts() -> dict[str, int]:
    """Learn every tenant's boosts from its feedback (:mod:`imgsearch.learning.boosts`), and keep
    the feedback logs' partitions; beat runs it every ``IMGSEARCH_BOOST_REFRESH_SECONDS``."""
    global _feedback_engine
    settings = Settings()
    with _lock:
        if _feedback_engine is None:  # the job needs no model: not the embedding runtime
            _feedback_engine = db_engine.make_engine(db_engine.resolve_url(settings))
    done = boosts.refresh(_feedback_engine, boosts.Policy.from_settings(settings))
    log.info(
        "boosts: %d per query, %d per product, %d tenants",
        done.query_boosts,
        done.product_boosts,
        done.tenants,
    )
    return {"query_boosts": done.query_boosts, "product_boosts": done.product_boosts, "tenants": done.tenants}


_listener: text_requests.Listener | None = None


def answer_text_requests() -> int:
    """Embed the texts ``imgsearch.search_text`` is waiting for (the listener thread's work)."""
    rt = runtime()
    follow_active_model(rt)
    embedder = rt.embedder
    if embedder is None or not rt.model.registered:
        return 0  # no text to embed for: search_text says so itself (no text embeddings come)

    def embed(texts: list[str]) -> Any:
        for query in texts:
            check_text(query)
        return embedder.embed_texts(texts)

    return text_requests.answer_pending(rt.engine, rt.model, embed, embedder.logit_params)


def evict_cached_texts() -> int:
    rt = runtime()
    with rt.engine.begin() as conn:
        return text_requests.evict(conn)


@worker_process_init.connect
def start_text_listener(**_: Any) -> None:
    """Each worker process (solo or a prefork child) answers ``search_text`` from a thread of its
    own, on a connection of its own that listens for the requests once the thread has loaded the
    model (``imgsearch status`` counts those connections)."""
    global _listener
    if _listener is None:
        settings = Settings()
        conninfo = db_engine.libpq_conninfo(make_url(db_engine.resolve_url(settings)))
        _listener = text_requests.Listener(
            conninfo, answer_text_requests, evict_cached_texts, prepare=runtime
        )
        _listener.start()


_deliverer: Deliverer | None = None


@worker_process_init.connect
def start_webhook_delivery(**_: Any) -> None:
    """Each worker process delivers webhooks from a thread of its own, on an engine of its own
    (:mod:`imgsearch.hooks.delivery`): a running ``imgsearch worker`` is all a shop needs."""
    global _deliverer
    if _deliverer is None:
        settings = Settings()
        engine = db_engine.make_engine(db_engine.resolve_url(settings))
        _deliverer = Deliverer(engine, settings.webhooks())
        _deliverer.start()
