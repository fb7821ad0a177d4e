"""Uploads through the library (:meth:`imgsearch.Catalog.add`, :meth:`~imgsearch.Catalog.add_many`):
rows checked (:mod:`imgsearch.ingest.rows`), near-copies handled by the call's ``on_duplicate``
(:mod:`imgsearch.ingest.duplicates`), everything written in one transaction under each tenant's
row-level security, and the workers woken only after the commit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from imgsearch.access import tenancy
from imgsearch.db import statistics
from imgsearch.errors import DuplicateImage, InvalidInput, InvalidQuery
from imgsearch.ingest import duplicates, rows, vectors
from imgsearch.records import ModelInfo

if TYPE_CHECKING:
    from imgsearch.context import Context


class Stored(tuple[int, bool]):
    """One upload's outcome: (image id, whether the image was new; False: the tenant had the
    bytes), and ``shared``: the tenant had them for another product, and the image is now this
    product's too."""

    shared: bool

    def __new__(cls, image_id: int, created: bool, shared: bool) -> Stored:
        stored = super().__new__(cls, (image_id, created))
        stored.shared = shared
        return stored


def add_row(context: Context, row: Mapping[str, Any], on_duplicate: str) -> Stored:
    """One upload: its image id, whether the image was new, and whether it was shared."""
    duplicates.check_policy(on_duplicate)
    prepared = rows.prepare_row(row, dim=context.dim, limits=context.limits)
    _check_checkable([prepared], on_duplicate, batch=False)
    model = _model_for(context, [prepared], batch=False)
    with context.engine.begin() as conn:
        tenancy.scope(conn, prepared.tenant)
        links = _apply_policy(context, conn, prepared.tenant, [prepared], [0], on_duplicate, batch=False)
        written = rows.write_rows(conn, [prepared], model)
        rows.link_rows(conn, links, written.ids)
    _wake(context, [prepared], written.created)  # after the commit: durable before anyone hears of it
    return Stored(written.ids[0], written.created[0], written.shared[0])


def add_many(
    context: Context, batch: Iterable[Mapping[str, Any]], *, progress: bool | None, on_duplicate: str
) -> list[int]:
    """Many uploads, all or nothing: every row checked first, then one transaction; ids in row order."""
    from tqdm import tqdm

    duplicates.check_policy(on_duplicate)
    show = sys.stderr.isatty() if progress is None else progress
    given = list(batch)
    prepared = rows.prepare_rows(
        tqdm(given, desc="checking", unit="row", disable=not show), dim=context.dim, limits=context.limits
    )
    _check_checkable(prepared, on_duplicate, batch=True)
    model = _model_for(context, prepared, batch=True)
    ids: list[int] = [0] * len(prepared)
    created_all = [False] * len(prepared)
    by_tenant: dict[str, list[int]] = {}
    for position, row in enumerate(prepared):
        by_tenant.setdefault(row.tenant, []).append(position)
    # one transaction; each tenant's rows are written under that tenant's row-level security
    with (
        context.engine.begin() as conn,
        tqdm(total=len(prepared), desc="writing", unit="row", disable=not show) as bar,
    ):
        for tenant, positions in by_tenant.items():
            tenancy.scope(conn, tenant)
            links = _apply_policy(
                context, conn, tenant, [prepared[p] for p in positions], positions, on_duplicate, batch=True
            )
            for start in range(0, len(positions), rows.WRITE_CHUNK):
                part = positions[start : start + rows.WRITE_CHUNK]
                written = rows.write_rows(conn, [prepared[p] for p in part], model)
                for position, image_id, new in zip(part, written.ids, written.created, strict=True):
                    ids[position] = image_id
                    created_all[position] = new
                bar.update(len(part))
            rows.link_rows(conn, links, [ids[p] for p in positions])
    _wake(context, prepared, created_all)
    # a shop's first batch (or one that grows it by a good share): statistics to plan its searches
    # and totals with at once, not when autovacuum comes by (imgsearch.db.statistics)
    statistics.after_write(context.engine, sum(created_all))
    return ids


def _model_for(context: Context, prepared: list[rows.PreparedRow], *, batch: bool) -> ModelInfo:
    """The model the rows are stored for, registered now when they are a new catalog's first:
    pending rows need the model the workers will embed them with, and rows with a vector its id
    (until the model has embeddings, a configured ``IMGSEARCH_MODEL`` still replaces it). A model
    whose vectors come from elsewhere embeds nothing here: every row must bring its vector."""
    model = context.active_model
    images = context.image_model
    if images.id != model.id:
        for index, row in enumerate(prepared):
            if row.embedding is not None:
                raise InvalidInput(
                    f"this catalog embeds each image with two models ({model.name!r} for text queries, "
                    f"{images.name!r} for image queries): upload the image without its embedding, and the "
                    "workers embed it with both"
                ).at_row(index if batch else None, None if batch else "upload")
    if model.external:
        for index, row in enumerate(prepared):
            if row.embedding is None:
                raise InvalidInput(
                    f"the catalog's model {model.name!r} embeds nothing here (its vectors come from "
                    "elsewhere: imgsearch model add); give the upload its embedding"
                ).at_row(index if batch else None, None if batch else "upload")
    return context.registered_model() if prepared else model


def _check_checkable(prepared: list[rows.PreparedRow], on_duplicate: str, *, batch: bool) -> None:
    if on_duplicate == "keep":
        return
    for index, row in enumerate(prepared):
        if row.uri is not None:
            raise InvalidQuery(
                f"on_duplicate={on_duplicate!r} needs the image's bytes, and this upload is a URL "
                "that a worker fetches later; upload the bytes, or find copies afterwards with "
                "`imgsearch duplicates`"
            ).at_row(index if batch else None, None if batch else "upload")


def _apply_policy(
    context: Context,
    conn: Connection,
    tenant: str,
    prepared: list[rows.PreparedRow],
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
    uploads = [duplicates.Upload(r.product_id, r.phash, r.content, r.embedding) for r in prepared]
    matches = duplicates.find(
        conn,
        tenant,
        uploads,
        context.registered_model(),
        lambda datas: list(context.embedder.embed_images(datas)),
        max_hamming=context.settings.duplicate_max_hamming,
        max_distance=context.settings.duplicate_max_distance,
    )
    links: list[tuple[int, int]] = []
    for i, (row, upload, match) in enumerate(zip(prepared, uploads, matches, strict=True)):
        # kept only where it is the one embedding an image needs (a second model's comes from workers)
        if row.embedding is None and upload.embedding is not None and context.image_model.id == context.active_model.id:
            row.embedding = vectors.as_vector(upload.embedding, context.dim)
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


def _wake(context: Context, prepared: list[rows.PreparedRow], created: list[bool]) -> None:
    pending = sum(1 for row, new in zip(prepared, created, strict=True) if new and row.embedding is None)
    if pending and context.waker is not None:
        context.waker(pending)
