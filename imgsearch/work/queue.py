"""PostgreSQL as the work queue: claim pending images, embed them, store the results.

An upload commits its row as ``pending`` before anything else happens; Redis only wakes workers
up. Workers claim batches with ``FOR UPDATE SKIP LOCKED`` under a lease (the row's
``lease_expires_at``, which doubles as the claim's token), embed a batch in one forward pass and
write embeddings and states in one transaction, and only while they still hold the lease: a worker
that was killed, or whose lease ran out and was re-claimed, writes nothing, so no image is ever
embedded twice. Rows whose lease expired are claimable again, so nothing is lost either.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from sqlalchemy import Connection, Engine, Table, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError

from imgsearch.access import tenancy
from imgsearch.db import citus, links, vector_index
from imgsearch.db.models import Embedding, Image, ImageState, Model
from imgsearch.embed.regions import Rule
from imgsearch.errors import DatabaseUnavailable, InvalidImage, TransientError
from imgsearch.ingest import checks, duplicates
from imgsearch.ingest.downloads import PUBLIC_ONLY, Downloads
from imgsearch.records import ModelInfo
from imgsearch.work import region_rules
from imgsearch.work import regions as work_regions

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 300  # a CPU batch of 32 base-size images takes ~15 s here; 20x headroom
MAX_ATTEMPTS = 5  # claims per image before it is marked failed (each claim counts one)
# after a transient failure an image waits before its next claim: 5 s, then 10, 20, 40 (about 75 s
# in all before it fails), so that a short outage of its URL's server doesn't use up its attempts
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
MODEL_SWITCH_LOCK = vector_index.MODEL_SWITCH_LOCK  # advisory lock key: writes of embeddings vs. model switches

Embed = Callable[[Sequence[bytes]], list[Any]]  # one vector or InvalidImage per image


@dataclass
class Claim:
    image_id: int
    tenant: str
    product_pk: int
    content: bytes | None
    uri: str | None
    attempts: int
    lease: dt.datetime
    regions: Rule | None = None  # where its regions come from (imgsearch.work.region_rules), if anywhere


@dataclass
class BatchResult:
    claimed: int = 0
    ready: int = 0
    failed: int = 0
    lost: int = 0  # results dropped because the lease had moved on
    errors: dict[int, str] = field(default_factory=dict)
    last_batch_full: bool = False  # more work may remain
    stale_model: bool = False  # the batch's model is no longer active: its claims were given back

    def add(self, other: BatchResult) -> None:
        """Count ``other``'s images into these totals."""
        self.claimed += other.claimed
        self.ready += other.ready
        self.failed += other.failed
        self.lost += other.lost
        self.errors.update(other.errors)


def _claimable() -> Any:
    """An image a worker may claim: pending (and due, after a failed attempt), or leased and expired."""
    return (
        (Image.state == ImageState.PENDING) & (Image.retry_at.is_(None) | (Image.retry_at <= func.now()))
    ) | ((Image.state == ImageState.EMBEDDING) & (Image.lease_expires_at < func.now()))


def claim_batch(conn: Connection, limit: int, lease_seconds: int = DEFAULT_LEASE_SECONDS) -> list[Claim]:
    """:func:`claim` of up to ``limit`` images. On a Citus cluster (:mod:`imgsearch.db.citus`),
    whose shards lock rows (``FOR UPDATE SKIP LOCKED``) only in a statement of one tenant: tenant
    by tenant, those with the oldest claimable images first, each claim routed to its shop's node."""
    if not citus.on_coordinator(conn):
        return region_rules.attach(conn, claim(conn, limit, lease_seconds))
    waiting = conn.execute(
        select(Image.tenant)
        .where(_claimable())
        .group_by(Image.tenant)
        .order_by(func.min(Image.id))
        .limit(limit)
    ).scalars()
    claims: list[Claim] = []
    for tenant in list(waiting):
        claims += claim(conn, limit - len(claims), lease_seconds, tenant)
        if len(claims) >= limit:
            break
    return region_rules.attach(conn, sorted(claims, key=lambda c: c.image_id))


def claim(
    conn: Connection, limit: int, lease_seconds: int = DEFAULT_LEASE_SECONDS, tenant: str | None = None
) -> list[Claim]:
    """Claim up to ``limit`` of the oldest claimable images (pending, or leased and expired), of
    ``tenant`` alone when one is given."""
    shop = [] if tenant is None else [Image.tenant == tenant]
    # picked once, in a materialised CTE: a subquery the plan scans again (a nested loop, as on a
    # Citus shard) would skip the rows it locked the first time and pick more than ``limit``
    picked = (
        select(Image.id)
        .where(_claimable(), *shop)
        .order_by(Image.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    stmt = (
        update(Image)
        .where(Image.id.in_(select(picked.c.id)), *shop)
        .values(
            state=ImageState.EMBEDDING,
            attempts=Image.attempts + 1,
            # statement_timestamp(), not clock_timestamp(): Citus runs no VOLATILE function in an
            # UPDATE (it evaluates a STABLE one once, on the coordinator)
            lease_expires_at=func.statement_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds),
            updated_at=func.now(),
        )
        .returning(
            Image.id,
            Image.tenant,
            Image.product_pk,
            Image.content,
            Image.uri,
            Image.attempts,
            Image.lease_expires_at,
        )
    )
    rows = conn.execute(stmt).all()
    return sorted(
        (Claim(r.id, r.tenant, r.product_pk, r.content, r.uri, r.attempts, r.lease_expires_at) for r in rows),
        key=lambda c: c.image_id,
    )


def read_claims(claims: Sequence[Claim], downloads: Downloads) -> list[bytes | Exception]:
    """Each claim's image bytes (stored, or downloaded from its URI), or why there are none.
    The batch's downloads run concurrently (:meth:`Downloads.fetch_all`)."""
    uris = [item.uri for item in claims if item.content is None and item.uri is not None]
    downloaded = iter(downloads.fetch_all(uris))
    datas: list[bytes | Exception] = []
    for item in claims:
        if item.content is not None:
            datas.append(item.content)
        elif item.uri is not None:
            datas.append(next(downloaded))
        else:
            datas.append(
                InvalidImage(
                    "the image has no stored bytes and no URI: its bytes were dropped after embedding "
                    "(IMGSEARCH_KEEP_CONTENT=false) or it was imported as an embedding only; "
                    "upload its image again to embed it"
                )
            )
    return datas


def embed_claims(claims: Sequence[Claim], embed: Embed, downloads: Downloads) -> list[Any]:
    """A vector, an :class:`InvalidImage` or a :class:`TransientError` per claim.

    Out of memory on a batch splits it in halves and tries again; a single image that still
    does not fit is a transient error (another worker, another time).
    """
    datas = read_claims(claims, downloads)
    results: list[Any] = list(datas)
    good = [i for i, d in enumerate(datas) if isinstance(d, bytes)]
    embedded = embed_splitting([datas[i] for i in good], embed)  # type: ignore[misc]
    for position, result in zip(good, embedded, strict=True):
        results[position] = result
    return results


def is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def embed_splitting(datas: list[bytes], embed: Embed) -> list[Any]:
    """``embed(datas)``, halving the batch on out-of-memory until it fits."""
    if not datas:
        return []
    try:
        return embed(datas)
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        if len(datas) == 1:
            return [TransientError(f"out of memory embedding one image: {exc}")]
        half = len(datas) // 2
        log.warning(
            "out of memory on a batch of %d; retrying as %d + %d", len(datas), half, len(datas) - half
        )
        return embed_splitting(datas[:half], embed) + embed_splitting(datas[half:], embed)


def release(conn: Connection, claims: Sequence[Claim]) -> None:
    """Give claims still held back to ``pending``, without counting the attempt."""
    table = cast(Table, Image.__table__)
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.tenant == bindparam("b_tenant"),
            table.c.state == ImageState.EMBEDDING.value,
            table.c.lease_expires_at == bindparam("b_lease"),
        )
        .values(
            state=ImageState.PENDING.value,
            attempts=func.greatest(table.c.attempts - 1, 0),
            lease_expires_at=None,
            updated_at=func.now(),
        )
    )
    if not claims:
        return
    conn.execute(stmt, [{"b_id": c.image_id, "b_tenant": c.tenant, "b_lease": c.lease} for c in claims])


def model_is_active(conn: Connection, model: ModelInfo, images: ModelInfo | None = None) -> bool:
    """Whether ``model`` is still the active one, and ``images`` the one serving image queries beside
    it (None: none), under the model-switch lock in shared mode: a switch (exclusive) waits for
    this batch's write, or this batch sees the switch."""
    conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": MODEL_SWITCH_LOCK})
    found = conn.execute(select(Model.id, Model.active).where(Model.active | Model.serves_images)).all()
    active = any(r.id == model.id and r.active for r in found)
    serving = next((r.id for r in found if not r.active), None)
    return active and serving == (None if images is None else images.id)


def store(
    conn: Connection,
    model: ModelInfo,
    claims: Sequence[Claim],
    results: Sequence[Any],
    thumbnails: Mapping[int, bytes] | None = None,
    hashes: Mapping[int, str] | None = None,
    also: tuple[ModelInfo, Sequence[Any]] | None = None,
    regions: work_regions.RegionVectors | None = None,
) -> BatchResult:
    """Write a batch's outcome in the caller's transaction, for the claims still held.
    ``thumbnails`` (by image id): images embedded now whose bytes give way to that thumbnail
    (``IMGSEARCH_KEEP_CONTENT=false``). ``hashes`` (by image id): perceptual hashes of images
    that came by URL, kept for the ones embedded now. ``also``: the model serving image queries
    beside ``model``, with its results: an image is ready when both embedded it. ``regions``: the
    regions of images embedded now, by image id, written beside their rows (imgsearch.work.regions).

    When the catalog switched models while the batch ran, nothing is written: the claims go back
    to ``pending`` for the new models (``stale_model`` says so).
    """
    outcome = BatchResult(claimed=len(claims))
    if also is not None:  # the first error of the two decides
        results = [a if isinstance(a, Exception) else b if isinstance(b, Exception) else a for a, b in zip(results, also[1], strict=True)]
    if not model_is_active(conn, model, None if also is None else also[0]):
        release(conn, claims)
        outcome.stale_model = True
        return outcome
    held: dict[int, Any] = {}
    # one statement; on a Citus cluster one per tenant (its shards lock rows only so)
    groups: dict[str | None, list[Claim]] = {None: list(claims)}
    if citus.on_coordinator(conn):
        groups = {}
        for c in claims:
            groups.setdefault(c.tenant, []).append(c)
    for tenant, group in groups.items():
        held_stmt = (
            select(Image.id, Image.lease_expires_at)
            .where(
                Image.id.in_([c.image_id for c in group]),
                Image.state == ImageState.EMBEDDING,
                *([] if tenant is None else [Image.tenant == tenant]),
            )
            .with_for_update()
        )
        held.update({r.id: r.lease_expires_at for r in conn.execute(held_stmt)})
    ready, failed, released = [], [], []
    for item, result in zip(claims, results, strict=True):
        if held.get(item.image_id) != item.lease:
            outcome.lost += 1
            continue
        if isinstance(result, InvalidImage):
            failed.append({"b_id": item.image_id, "b_tenant": item.tenant, "b_error": str(result)[:2000]})
            outcome.errors[item.image_id] = str(result)
        elif isinstance(result, Exception):
            if item.attempts >= MAX_ATTEMPTS:
                gave_up = f"gave up after {item.attempts} attempts: {result}"[:2000]
                failed.append({"b_id": item.image_id, "b_tenant": item.tenant, "b_error": gave_up})
            else:
                delay = retry_delay(item.attempts)
                released.append(
                    {
                        "b_id": item.image_id,
                        "b_tenant": item.tenant,
                        "b_delay": delay,
                        "b_error": f"attempt {item.attempts} of {MAX_ATTEMPTS} failed; {retry_note(delay)}: "
                        f"{result}"[:2000],
                    }
                )
        else:
            ready.append((item, np.asarray(result, dtype=np.float32)))
    if ready:
        # a row for each product the image belongs to, read under the images' locks taken above
        # (imgsearch.db.links: an upload linking one of them waits for this commit)
        written = links.embedding_rows(conn, model.id, {c.image_id: v for c, v in ready})
        if also is not None:  # the image model's vectors of the claims ready (an error's is no vector)
            second = {c.image_id: r for c, r in zip(claims, also[1], strict=True)}
            vectors = {c.image_id: np.asarray(second[c.image_id], dtype=np.float32) for c, _ in ready}
            written += links.embedding_rows(conn, also[0].id, vectors)
        if written:
            # the primary key's columns: on a Citus cluster it holds the tenant too
            key = [Embedding.model_id, Embedding.image_id, Embedding.product_pk, Embedding.region]
            conn.execute(
                pg_insert(Embedding).on_conflict_do_update(
                    index_elements=[*key, Embedding.tenant] if citus.on_coordinator(conn) else key,
                    # the proposed row's created_at (its default, now()): Citus takes no now() here
                    set_={
                        "embedding": pg_insert(Embedding).excluded.embedding,
                        "created_at": pg_insert(Embedding).excluded.created_at,
                    },
                ),
                written,
            )
        if regions:  # those of the images ready
            work_regions.replace_regions(conn, model.id, {c.image_id: regions[c.image_id] for c, _ in ready if c.image_id in regions})
        _set_state(
            conn,
            [{"b_id": c.image_id, "b_tenant": c.tenant, "b_error": None} for c, _ in ready],
            ImageState.READY,
        )
        dropped = [
            {"b_id": c.image_id, "b_tenant": c.tenant, "b_thumbnail": thumbnails[c.image_id]}
            for c, _ in ready
            if thumbnails and c.image_id in thumbnails
        ]
        if hashes:
            duplicates.set_where_unset(
                conn,
                "phash",
                {c.image_id: hashes[c.image_id] for c, _ in ready if c.image_id in hashes},
                {c.image_id: c.tenant for c, _ in ready},
            )
        if dropped:
            table = cast(Table, Image.__table__)
            conn.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"), table.c.tenant == bindparam("b_tenant"))
                .values(content=None, thumbnail=bindparam("b_thumbnail")),
                dropped,
            )
    _set_state(conn, failed, ImageState.FAILED)
    if released:
        table = cast(Table, Image.__table__)
        conn.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.tenant == bindparam("b_tenant"))
            .values(
                state=ImageState.PENDING.value,
                error=bindparam("b_error"),
                lease_expires_at=None,
                retry_at=func.statement_timestamp()
                + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("b_delay")),
                updated_at=func.now(),
            ),
            released,
        )
    outcome.ready, outcome.failed = len(ready), len(failed)
    return outcome


def _set_state(conn: Connection, rows: list[dict[str, Any]], state: ImageState) -> None:
    if not rows:
        return
    table = cast(Table, Image.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.tenant == bindparam("b_tenant"))
        .values(
            state=state.value,
            error=bindparam("b_error"),
            lease_expires_at=None,
            retry_at=None,
            updated_at=func.now(),
        )
    )
    conn.execute(stmt, rows)


def retry_note(delay: float) -> str:
    """When a released image is tried again: not before ``delay`` seconds from now, and then at
    the first worker run (a wake-up from an upload, or the workers' sweep)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
    return f"retried at the first worker run from {when:%Y-%m-%dT%H:%M:%SZ} ({delay:g} s after this attempt)"


def retry_delay(attempts: int) -> float:
    """Seconds an image waits for its next claim after its ``attempts``-th failed for a passing reason."""
    return float(min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1)))


def process_batch(
    engine: Engine, model: ModelInfo, embed: Embed, *, batch_size: int, lease_seconds: int = DEFAULT_LEASE_SECONDS,
    downloads: Downloads = PUBLIC_ONLY, also: tuple[ModelInfo, Embed] | None = None,
) -> BatchResult:
    """Claim one batch, embed it outside any transaction, store the outcome. Every tenant is
    processed (as ``imgsearch_worker``); rows never change tenant. ``also``: the model that serves image
    queries beside ``model``, and its embedding function. Whole images only (pipeline.run: regions too)."""
    try:
        with engine.begin() as conn:
            tenancy.run_as_worker(conn)
            claims = claim_batch(conn, batch_size, lease_seconds)
        if not claims:
            return BatchResult()
        results = embed_claims(claims, embed, downloads)
        second = None if also is None else (also[0], embed_claims(claims, also[1], downloads))
        with engine.begin() as conn:
            tenancy.run_as_worker(conn)
            return store(conn, model, claims, results, also=second)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable while embedding: {exc.orig}") from exc


def claimable_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM imgsearch.images "
                    "WHERE (state = 'pending' AND (retry_at IS NULL OR retry_at <= now())) "
                    "OR (state = 'embedding' AND lease_expires_at < now())"
                )
            ).scalar_one()
        )


def retry_failed(engine: Engine, tenant: str | None = None) -> int:
    """Put failed images back to pending with a fresh attempt count; returns how many."""
    stmt = (
        update(Image)
        .where(Image.state == ImageState.FAILED)
        .values(state=ImageState.PENDING, error=None, attempts=0, retry_at=None, updated_at=func.now())
    )
    if tenant is not None:
        stmt = stmt.where(Image.tenant == checks.identifier(tenant, "tenant"))
    with engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)
