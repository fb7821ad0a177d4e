"""Embedding claimed batches back to back: batch n+1 is claimed, read and decoded in a thread
while the model runs on batch n, so a worker's CPU or GPU never waits for JPEG decoding."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from imgsearch.access import tenancy
from imgsearch.db import statistics, vector_index
from imgsearch.embed.active import register
from imgsearch.embed.model import Embedder, PreparedBatch
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, InvalidImage
from imgsearch.ingest import images
from imgsearch.ingest.downloads import Downloads
from imgsearch.records import ModelInfo
from imgsearch.work import queue, regions

log = logging.getLogger(__name__)

THUMBNAIL_PX = 256  # the thumbnail kept when an image's bytes are dropped (IMGSEARCH_KEEP_CONTENT=false)
THUMBNAIL_LIMITS = images.Limits(max_bytes=1 << 40, max_pixels=200_000_000)  # checked at upload


@dataclass
class _Claimed:
    claims: list[queue.Claim]
    datas: list[bytes | Exception]  # per claim: the bytes, or why there are none
    good: list[int]  # positions with bytes
    prepared: PreparedBatch
    thumbnails: dict[int, bytes]  # by image id: what replaces the stored bytes once embedded
    hashes: dict[int, str]  # by image id: the perceptual hash of an image that came by URL


def _claim_and_prepare(
    engine: Engine,
    embedder: Embedder,
    batch_size: int,
    lease_seconds: int,
    downloads: Downloads,
    keep_content: bool = True,
) -> _Claimed | None:
    with engine.begin() as conn:
        tenancy.run_as_worker(conn)
        claims = queue.claim_batch(conn, batch_size, lease_seconds)
    if not claims:
        return None
    datas = queue.read_claims(claims, downloads)
    good = [i for i, d in enumerate(datas) if isinstance(d, bytes)]
    prepared = embedder.prepare([datas[i] for i in good])  # type: ignore[misc]
    thumbnails: dict[int, bytes] = {}
    if not keep_content:
        for i in good:
            claim, data = claims[i], datas[i]
            if claim.content is not None and isinstance(data, bytes):
                # an image that can't be read fails embedding the same way, and keeps its bytes
                with contextlib.suppress(InvalidImage):
                    thumbnails[claim.image_id] = images.thumbnail(data, THUMBNAIL_PX, THUMBNAIL_LIMITS)
    hashes: dict[int, str] = {}
    for i in good:
        claim, data = claims[i], datas[i]
        if claim.content is None and isinstance(data, bytes):
            # uploads hashed their bytes; a URL's are here for the first time
            with contextlib.suppress(InvalidImage):
                hashes[claim.image_id] = images.perceptual_hash(data, THUMBNAIL_LIMITS)
    return _Claimed(claims, datas, good, prepared, thumbnails, hashes)


def _results(embedder: Embedder, batch: _Claimed) -> list[Any]:
    try:
        vectors = embedder.forward(batch.prepared)
        embedded: list[Any] = embedder.assemble(batch.prepared, len(batch.good), vectors)
    except (RuntimeError, MemoryError) as exc:
        if not queue.is_oom(exc):
            raise
        log.warning("out of memory on a batch of %d; splitting it", len(batch.good))
        embedded = queue.embed_splitting([batch.datas[i] for i in batch.good], embedder.embed_images)  # type: ignore[misc]
    results: list[Any] = list(batch.datas)
    for position, result in zip(batch.good, embedded, strict=True):
        results[position] = result
    return results


def _regions(embedder: Embedder, batch: _Claimed) -> regions.RegionVectors | None:
    """The regions of the batch's images whose rule is on (:mod:`imgsearch.work.regions`)."""
    rules = {c.image_id: c.regions for c in batch.claims if c.regions is not None and c.regions.on}
    if not rules:
        return None
    return regions.embed_regions(embedder, rules, {c.image_id: d for c, d in zip(batch.claims, batch.datas, strict=True)})


def _also(also: tuple[ModelInfo, Embedder], batch: _Claimed) -> tuple[ModelInfo, list[Any]]:
    """The image model's results for a batch (its own preprocessing: the two models' differ)."""
    model, embedder = also
    embedded = queue.embed_splitting([batch.datas[i] for i in batch.good], embedder.embed_images)  # type: ignore[misc]
    results: list[Any] = list(batch.datas)
    for position, result in zip(batch.good, embedded, strict=True):
        results[position] = result
    return model, results


def run(
    engine: Engine,
    model: ModelInfo,
    embedder: Embedder,
    *,
    batch_size: int,
    lease_seconds: int,
    downloads: Downloads,
    time_budget_seconds: float | None = None,
    on_batch: Callable[[queue.BatchResult], None] | None = None,
    keep_content: bool = True,
    also: tuple[ModelInfo, Embedder] | None = None,
) -> queue.BatchResult:
    """Embed claimable images batch after batch until none is left (or the time budget is spent);
    returns the totals, with ``claimed`` of the last batch deciding whether more may remain.
    ``keep_content=False``: an uploaded image's bytes give way to a thumbnail once embedded.
    ``also``: the model that serves image queries beside the active one, and its embedder: each
    image is embedded with both (:func:`imgsearch.work.queue.store`)."""
    deadline = None if time_budget_seconds is None else time.monotonic() + time_budget_seconds
    totals = queue.BatchResult()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-claim") as pool:
            upcoming = pool.submit(
                _claim_and_prepare, engine, embedder, batch_size, lease_seconds, downloads, keep_content
            )
            while True:
                batch = upcoming.result()
                if batch is None:
                    return totals
                more = deadline is None or time.monotonic() < deadline
                if more:
                    upcoming = pool.submit(
                        _claim_and_prepare,
                        engine,
                        embedder,
                        batch_size,
                        lease_seconds,
                        downloads,
                        keep_content,
                    )
                results = _results(embedder, batch)
                second = None if also is None else _also(also, batch)
                found = _regions(embedder, batch)
                with engine.begin() as conn:
                    tenancy.run_as_worker(conn)
                    outcome = queue.store(
                        conn, model, batch.claims, results, batch.thumbnails, batch.hashes, also=second,
                        regions=found,
                    )
                totals.add(outcome)
                if outcome.ready:  # the embeddings' statistics, when a shop's first images land
                    statistics.after_write(engine, outcome.ready, ("embeddings",))
                totals.last_batch_full = outcome.claimed >= batch_size
                if on_batch is not None:
                    on_batch(outcome)
                if outcome.stale_model:
                    # the catalog switched models: give back what was claimed ahead and stop; the
                    # caller picks up the new active model
                    totals.stale_model = totals.last_batch_full = True
                    ahead = upcoming.result() if more else None
                    if ahead is not None:
                        with engine.begin() as conn:
                            tenancy.run_as_worker(conn)
                            queue.release(conn, ahead.claims)
                    return totals
                if not more:
                    return totals
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable while embedding: {exc.orig}") from exc


def drain(
    engine: Engine,
    embedder_for: Callable[[ModelInfo], Embedder],
    *,
    batch_size: int,
    lease_seconds: int,
    downloads: Downloads,
    progress: bool,
    keep_content: bool = True,
    model: ModelInfo | None = None,
) -> queue.BatchResult:
    """Embed everything claimable in this process with the active model's embedder (``embedder_for``
    gives it; a model switch mid-way moves on to the new one), with a progress bar; returns the
    totals. ``model``: the catalog's model when it isn't registered yet (:mod:`imgsearch.embed.active`):
    registered at the first embedding, once its embedder has loaded."""
    from tqdm import tqdm

    totals = queue.BatchResult()
    if model is None or model.registered:
        with engine.connect() as conn:
            model = vector_index.active_model(conn)
    if model is not None and not model.external:
        embedder_for(model)  # a runtime that can't serve the model is refused now, work or none
    claimable = queue.claimable_count(engine)
    if not claimable:
        return totals
    if model is not None and not model.registered:
        embedder_for(model).load()  # a model that can't load registers nothing
        register(engine, model)
    with tqdm(total=claimable, desc="embedding", unit="img", disable=not progress) as bar:
        while True:
            with engine.connect() as conn:
                active = vector_index.active_model(conn)
            if active is None:
                raise ConfigurationError("the catalog has no active model")
            if active.external:
                raise ConfigurationError(external_waiting(active, claimable))
            embedder = embedder_for(active)
            embedder.load()  # before claiming: a model that can't load leaves no image leased
            also = image_model_beside(engine, active, embedder_for)
            part = run(
                engine,
                active,
                embedder,
                batch_size=batch_size,
                lease_seconds=lease_seconds,
                downloads=downloads,
                on_batch=lambda outcome: bar.update(0 if outcome.stale_model else outcome.claimed),
                keep_content=keep_content,
                also=also,
            )
            totals.add(part)
            if not part.stale_model:
                return totals


def image_model_beside(
    engine: Engine, active: ModelInfo, embedder_for: Callable[[ModelInfo], Embedder]
) -> tuple[ModelInfo, Embedder] | None:
    """The model that serves image queries beside ``active``, with its embedder (loaded), when the
    catalog keeps one; None when the active model serves them."""
    with engine.connect() as conn:
        images = vector_index.image_model(conn)
    if images is None or images.id == active.id:
        return None
    if images.external:
        raise ConfigurationError(
            f"the model {images.name!r} serves image queries and embeds nothing here (its vectors come from "
            "elsewhere): upload its vectors with each image, or activate a model imgsearch loads for images"
        )
    embedder = embedder_for(images)
    embedder.load()
    return images, embedder


def external_waiting(model: ModelInfo, pending: int) -> str:
    """Why pending images stay pending under a model whose vectors come from elsewhere."""
    return (
        f"{pending} images wait to be embedded, and the catalog's model {model.name!r} embeds nothing "
        "here (its vectors come from elsewhere: imgsearch model add); upload their vectors, or "
        "activate a model imgsearch loads"
    )
