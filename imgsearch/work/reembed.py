"""Switching embedding models without downtime.

1. :func:`backfill` embeds every ready image with a second model, beside the active one (its own
   partial HNSW index; the dimension may differ). Searches keep using the active model meanwhile.
2. :func:`activate` switches the active model in one transaction, once no ready image lacks an
   embedding of the new model. Workers notice at their next batch: a batch embedded with the old
   model while the switch commits is given back to ``pending`` rather than stored
   (:func:`imgsearch.work.queue.store`).
3. :func:`drop` deletes an inactive model's embeddings, its index and its row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, distinct, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError

from imgsearch.access import tenancy
from imgsearch.db import citus, links, statistics, vector_index
from imgsearch.db.models import Embedding, Image, ImageProduct, ImageState, Model
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, InvalidInput, NotFound
from imgsearch.hooks import outbox
from imgsearch.ingest import checks
from imgsearch.ingest.downloads import Downloads
from imgsearch.records import ModelInfo
from imgsearch.work import queue


@dataclass
class BackfillResult:
    embedded: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # image id -> why it was skipped


@dataclass(frozen=True)
class ModelRow:
    name: str
    dim: int
    active: bool
    embeddings: int
    external: bool = False
    serves_images: bool = False
    index: str = "valid"  # its HNSW index: valid, invalid (a build interrupted) or missing


def register(engine: Engine, name: str, dim: int) -> ModelInfo:
    """Register ``name`` beside the active model (idempotent), with its own HNSW index."""
    with engine.begin() as conn:
        return vector_index.register_model(conn, name, dim)


def add_external(engine: Engine, name: str, dim: Any, *, make_active: bool = False) -> ModelInfo:
    """Register ``name``, a model whose vectors come from elsewhere (FashionCLIP, OpenAI or Cohere
    embeddings, a shop's own model), of dimension ``dim``: imgsearch never loads it; uploads and
    imports bring its vectors, searches take query vectors. ``make_active``: then :func:`activate`
    it (refused while ready images lack its vectors)."""
    name = checks.identifier(name, "model name")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InvalidInput(f"dim must be a whole number from 1 to {MAX_DIM}, got {dim!r}")
    with engine.begin() as conn:
        model = vector_index.register_model(conn, name, dim, external=True)
    if make_active:
        model, _ = activate(engine, name)
    return model


MAX_DIM = 4000  # the models table's check (and pgvector's largest indexed halfvec is 4,000)


def _missing(model: ModelInfo) -> Any:
    """Ready images with a product whose row of ``model`` is missing (an image shared by several
    products has a row per product: :mod:`imgsearch.db.links`)."""
    # each correlation names the tenant too: a Citus cluster runs it on each shard
    return (Image.state == ImageState.READY) & exists().where(
        ImageProduct.tenant == Image.tenant,
        ImageProduct.image_id == Image.id,
        ~exists().where(
            Embedding.tenant == ImageProduct.tenant,
            Embedding.image_id == ImageProduct.image_id,
            Embedding.product_pk == ImageProduct.product_pk,
            Embedding.model_id == model.id,
            Embedding.region == 0,
        ),
    )


def missing_count(conn: Connection, model: ModelInfo) -> int:
    return int(conn.execute(select(func.count()).select_from(Image).where(_missing(model))).scalar_one())


def _batches(
    engine: Engine, model: ModelInfo, batch_size: int, skip: set[int]
) -> Iterator[list[queue.Claim]]:
    """Batches of ready images still lacking ``model``'s embedding, in id order; passes over the
    table again until a pass finds nothing (images that became ready meanwhile are caught)."""
    while True:
        after, found = 0, False
        while True:
            with engine.begin() as conn:
                tenancy.run_as_worker(conn)
                stmt = select(Image.id, Image.tenant, Image.product_pk, Image.content, Image.uri).where(
                    _missing(model), Image.id > after
                )
                if skip:
                    stmt = stmt.where(Image.id.not_in(skip))
                rows = conn.execute(stmt.order_by(Image.id).limit(batch_size)).all()
            if not rows:
                break
            found = True
            after = rows[-1].id
            yield [queue.Claim(r.id, r.tenant, r.product_pk, r.content, r.uri, 0, None) for r in rows]  # type: ignore[arg-type]
        if not found:
            return


def backfill(
    engine: Engine,
    model: ModelInfo,
    embed: queue.Embed,
    *,
    batch_size: int,
    downloads: Downloads,
    on_batch: Callable[[int], None] | None = None,
) -> BackfillResult:
    """Embed every ready image that has no embedding of ``model`` yet, batch by batch (each batch
    written in its own transaction, so an interrupted backfill resumes where it stopped). Images
    that can't be embedded are reported and left as they are."""
    result = BackfillResult()
    skip: set[int] = set()
    try:
        for claims in _batches(engine, model, batch_size, skip):
            vectors = queue.embed_claims(claims, embed, downloads)
            embedded: dict[str, dict[int, Any]] = {}  # by tenant
            for claim, vector in zip(claims, vectors, strict=True):
                if isinstance(vector, Exception):
                    skip.add(claim.image_id)
                    result.errors[claim.image_id] = str(vector)
                    continue
                embedded.setdefault(claim.tenant, {})[claim.image_id] = np.asarray(vector, dtype=np.float32)
            if embedded:
                with engine.begin() as conn:
                    tenancy.run_as_worker(conn)
                    for tenant, found in sorted(embedded.items()):
                        # the images' locks: an upload linking one of them meanwhile waits, then
                        # copies these rows (imgsearch.db.links); a tenant's at a time (Citus
                        # locks rows only in a statement of one tenant)
                        conn.execute(
                            select(Image.id)
                            .where(Image.tenant == tenant, Image.id.in_(sorted(found)))
                            .with_for_update(key_share=True)
                        )
                        rows = links.embedding_rows(conn, model.id, found, tenant)
                        conn.execute(pg_insert(Embedding).on_conflict_do_nothing(), rows)
            result.embedded += sum(len(found) for found in embedded.values())
            if embedded:  # the new model's rows, planned with statistics that count them
                statistics.after_write(engine, sum(len(found) for found in embedded.values()), ("embeddings",))
            if on_batch is not None:
                on_batch(len(claims))
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable while re-embedding: {exc.orig}") from exc
    return result


def _locked_model(conn: Connection, name: str) -> ModelInfo:
    checks.unicode(name, "model name")
    if citus.on_coordinator(conn):
        # the models table is a reference table, which the shards' foreign keys name: Citus writes
        # it after a read of every shard only over one connection per node
        conn.execute(text("SET LOCAL citus.multi_shard_modify_mode = 'sequential'"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": queue.MODEL_SWITCH_LOCK})
    model = vector_index.get_model(conn, name)
    if model is None:
        raise NotFound(
            f"no model {name!r} in this catalog; backfill it first with `imgsearch reembed --model`"
        )
    return model


ROLES = ("both", "text", "image")


def activate(
    engine: Engine, name: str, *, requeue_missing: bool = False, serves: str = "both"
) -> tuple[ModelInfo, int]:
    """Make ``name`` the model that serves ``serves`` queries in one transaction; returns it and
    how many images were put back to ``pending`` for it.

    ``both`` (the default): the active model, for text and image queries alike. ``text``: the
    active model, text queries; image queries stay with the model that served them (kept beside
    it). ``image``: image queries and "more like this" only, beside the active model; workers then
    embed each image with both. Refused while ready images lack its embedding (run :func:`backfill`
    first), unless ``requeue_missing``: those images then go back to ``pending`` and the workers
    embed them (until then searches don't find them).
    """
    if serves not in ROLES:
        raise InvalidInput(f"a model serves one of {', '.join(ROLES)} queries, got {serves!r}")
    with engine.begin() as conn:
        model = _locked_model(conn, name)
        images_model = vector_index.image_model(conn)
        already = {
            "both": model.active and not model.serves_images and (images_model is None or images_model.id == model.id),
            "text": model.active,
            "image": images_model is not None and images_model.id == model.id,
        }[serves]
        if already:
            return model, 0
        missing = missing_count(conn, model)
        if missing and not requeue_missing:
            first = (
                "upload or import their vectors (its vectors come from elsewhere)"
                if model.external
                else f"run `imgsearch reembed --model {name}` first (or activate with --requeue-missing)"
            )
            raise ConfigurationError(f"{missing} ready images have no {name!r} embedding yet; {first}")
        requeued = 0
        if missing:
            requeued = int(
                conn.execute(
                    update(Image)
                    .where(_missing(model))
                    .values(state=ImageState.PENDING, attempts=0, updated_at=func.now())
                ).rowcount
            )
        active = vector_index.active_model(conn)
        if serves in ("both", "text"):
            conn.execute(update(Model).where(Model.active).values(active=False))
            conn.execute(update(Model).where(Model.id == model.id).values(active=True))
        # the model that serves images when it isn't the active one
        images_by = {"both": None, "text": images_model, "image": model}[serves]
        now_active = model if serves in ("both", "text") else active
        conn.execute(update(Model).where(Model.serves_images).values(serves_images=False))
        if images_by is not None and (now_active is None or images_by.id != now_active.id):
            conn.execute(update(Model).where(Model.id == images_by.id).values(serves_images=True))
        model = vector_index.get_model(conn, model.name) or model
        shown = {"model": model.name, "model_id": model.id, "dim": model.dim, "serves": serves, "requeued": requeued}
        outbox.emit_to_all(conn, "model.activated", shown)  # with the switch, or not at all
    return model, requeued


def drop(engine: Engine, name: str) -> int:
    """Delete an inactive model's embeddings, HNSW index and registration; returns the number of
    embeddings deleted."""
    with engine.begin() as conn:
        model = _locked_model(conn, name)
        if model.active:
            raise InvalidInput(f"{name!r} is the active model; activate another one before dropping it")
        if model.serves_images:
            raise InvalidInput(
                f"{name!r} serves image queries; activate another one for images (--for image) before dropping it"
            )
        deleted = int(conn.execute(delete(Embedding).where(Embedding.model_id == model.id)).rowcount)
        vector_index.drop_index(conn, model.id)
        conn.execute(delete(Model).where(Model.id == model.id))
    return deleted


def listing(engine: Engine) -> list[ModelRow]:
    """Every registered model with its number of embedded images and its index's state, active first."""
    counts = (
        select(Embedding.model_id, func.count(distinct(Embedding.image_id)).label("n"))
        .group_by(Embedding.model_id)
        .subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Model.name, Model.dim, Model.active, func.coalesce(counts.c.n, 0), Model.external, Model.serves_images
            )
            .outerjoin(counts, counts.c.model_id == Model.id)
            .order_by(Model.active.desc(), Model.serves_images.desc(), Model.id)
        ).all()
        indexes = vector_index.index_states(conn)
    return [ModelRow(r[0], r[1], r[2], int(r[3]), r[4], r[5], indexes.get(r[0], "missing")) for r in rows]
