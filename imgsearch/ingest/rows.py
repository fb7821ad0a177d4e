"""Durable uploads: validate rows, then write products, images and embeddings in one transaction.

An image row is committed as ``pending`` (its bytes stored in PostgreSQL) before anything else
hears of it; a row that brings its own embedding is committed as ``ready``. The same bytes
uploaded again by the same tenant return the existing image, linked to the row's product too
(:mod:`imgsearch.db.links`): a photo shared by several products is stored and embedded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from imgsearch.db import links
from imgsearch.db.models import Embedding, Image, ImageState, Product
from imgsearch.errors import InvalidImage, InvalidInput
from imgsearch.ingest import checks, duplicates, images, vectors
from imgsearch.records import ModelInfo

PRODUCT_FIELDS = ("category", "price", "currency", *checks.TEXT_FIELDS)  # each a column of products
ROW_KEYS = frozenset({"image", "embedding", "tenant", "product_id", "attributes", *PRODUCT_FIELDS})
WRITE_CHUNK = 500  # rows per INSERT; ~0.1 s each for bring-your-own 768-d vectors here


@dataclass
class PreparedRow:
    tenant: str
    product_id: str
    category: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    title: str | None = None
    description: str | None = None
    brand: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    info: images.ImageInfo | None = None
    uri: str | None = None
    embedding: vectors.Vector | None = None
    phash: str | None = None  # the bytes' perceptual hash (64 '0'/'1')
    duplicate_of: int | None = None  # on_duplicate="link": the image of another product it copies


def _attributes(value: Any) -> dict[str, Any]:
    return {} if value is None else checks.attributes(value, "attributes")


def _product_part(row: Mapping[str, Any]) -> PreparedRow:
    """A row's tenant, product and product fields, checked; no image or embedding yet."""
    tenant, product_id = checks.product_row(row, ROW_KEYS)
    return PreparedRow(
        tenant=tenant,
        product_id=product_id,
        category=checks.identifier_field(row.get("category"), "category", required=False),
        price=checks.price(row.get("price")),
        currency=checks.currency(row.get("currency")),
        attributes=_attributes(row.get("attributes")),
        title=checks.product_text(row.get("title"), "title"),
        description=checks.product_text(row.get("description"), "description"),
        brand=checks.product_text(row.get("brand"), "brand"),
    )


def prepare_row(
    row: Mapping[str, Any], *, dim: int, limits: images.Limits, vector: vectors.Vector | None = None
) -> PreparedRow:
    """Validate one upload; raises :class:`InvalidInput` naming the bad field. ``vector``: the
    row's embedding, already checked and normalised (a bulk import checks a batch at once)."""
    prepared = _product_part(row)
    source, embedding = row.get("image"), row.get("embedding")
    if source is None and embedding is None:
        raise InvalidInput("each upload needs an image (path, bytes, file object or URL) or an embedding")
    if embedding is not None:
        prepared.embedding = vector if vector is not None else vectors.as_vector(embedding, dim)
    if images.is_url(source):
        prepared.uri = checks.url(str(source))
    elif source is not None:
        prepared.content = images.read_source(source, limits)
        prepared.info = images.inspect(prepared.content, limits)
        # bytes whose header is fine but whose data isn't (a truncated JPEG) are stored as
        # before: the worker fails them with the decoder's reason, and they keep no hash
        with contextlib.suppress(InvalidImage):
            prepared.phash = images.perceptual_hash(prepared.content, limits)
    return prepared


def prepare_rows(rows: Iterable[Mapping[str, Any]], *, dim: int, limits: images.Limits) -> list[PreparedRow]:
    """Validate every row first; the first bad one fails the call with its index, and so does a
    row that gives a product another value than an earlier row of the call gave it."""
    prepared = []
    given: checks.Given = {}
    for index, row in enumerate(rows):
        try:
            prepared.append(prepare_row(row, dim=dim, limits=limits))
        except InvalidInput as exc:
            exc.at_row(index)  # same type and attributes; the message names the row
            raise
        _agree(given, prepared[-1], index, f"row {index}")
    return prepared


def product_fields(row: PreparedRow) -> dict[str, Any]:
    """The product fields a row gives (an attribute is a field of its own: rows' attributes merge)."""
    fields = {name: getattr(row, name) for name in PRODUCT_FIELDS}
    fields = {name: value for name, value in fields.items() if value is not None}
    fields.update({f"attributes.{key}": value for key, value in row.attributes.items()})
    return fields


def _agree(given: checks.Given, row: PreparedRow, index: int, name: str) -> None:
    checks.agree(given, row.tenant, row.product_id, product_fields(row), index, name)


def check_products_agree(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Before a batch is stored row by row: :class:`InvalidInput` naming both rows when two give
    one product different values. A row with a bad value is left to fail on its own."""
    given: checks.Given = {}
    for index, (row, name) in enumerate(zip(rows, names, strict=True)):
        try:
            fields = _product_part(row)
        except InvalidInput:
            continue
        _agree(given, fields, index, name)


def _upsert_products(conn: Connection, rows: list[PreparedRow]) -> dict[tuple[str, str], int]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        values = merged.setdefault(
            (row.tenant, row.product_id),
            {"tenant": row.tenant, "product_id": row.product_id, "attributes": {}}
            | dict.fromkeys(PRODUCT_FIELDS),
        )
        for name in PRODUCT_FIELDS:
            if getattr(row, name) is not None:
                values[name] = getattr(row, name)
        values["attributes"] = {**values["attributes"], **row.attributes}
    base = pg_insert(Product)
    # Re-uploading a product updates what the new row says and keeps the rest.
    stmt = base.on_conflict_do_update(
        index_elements=[Product.tenant, Product.product_id],
        set_={
            **{name: func.coalesce(base.excluded[name], Product.__table__.c[name]) for name in PRODUCT_FIELDS},
            "attributes": Product.attributes.op("||")(base.excluded.attributes),
            # the proposed row's default, now(): Citus takes no function but an immutable one here
            "updated_at": base.excluded.updated_at,
        },
    ).returning(Product.id, Product.tenant, Product.product_id)
    # in key order, byte by byte, as every writer of products locks them (their ORDER BY ... COLLATE
    # "C"): two batches of the same products lock them in one order (none waits in a circle)
    result = conn.execute(stmt, [merged[key] for key in sorted(merged)])
    return {(r.tenant, r.product_id): r.id for r in result}


def _image_values(row: PreparedRow, product_pk: int) -> dict[str, Any]:
    info = row.info
    return {
        "product_pk": product_pk,
        "tenant": row.tenant,
        "sha256": info.sha256 if info else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "format": info.format if info else None,
        "byte_size": info.byte_size if info else None,
        "content": row.content,
        "uri": row.uri,
        "phash": row.phash,
        "duplicate_of": row.duplicate_of,
        "state": ImageState.READY if row.embedding is not None else ImageState.PENDING,
    }


class Written(NamedTuple):
    """What :func:`write_rows` did, per row."""

    ids: list[int]  # the row's image id
    created: list[bool]  # the row stored the image (False: the tenant had the bytes, before or in this call)
    shared: list[bool]  # the row gave a stored image to another product (a photo shared by several)


def write_rows(conn: Connection, rows: list[PreparedRow], model: ModelInfo) -> Written:
    """Write validated rows inside the caller's transaction; an image already stored is linked
    to the row's product as well."""
    products = _upsert_products(conn, rows)
    ids: list[int | None] = [None] * len(rows)
    created = [False] * len(rows)
    shared = [False] * len(rows)

    first_of: dict[tuple[str, bytes], int] = {}
    hashed, unhashed = [], []
    for index, row in enumerate(rows):
        if row.info is None:
            unhashed.append(index)
        elif (row.tenant, row.info.sha256) not in first_of:
            first_of[(row.tenant, row.info.sha256)] = index
            hashed.append(index)

    by_hash: dict[tuple[str, bytes], int] = {}
    if hashed:
        stmt = (
            pg_insert(Image)
            .on_conflict_do_nothing(index_elements=[Image.tenant, Image.sha256])
            .returning(Image.id, Image.tenant, Image.sha256)
        )
        values = [_image_values(rows[i], products[(rows[i].tenant, rows[i].product_id)]) for i in hashed]
        for r in conn.execute(stmt, values):
            by_hash[(r.tenant, bytes(r.sha256))] = r.id
            created[first_of[(r.tenant, bytes(r.sha256))]] = True
        missing = [key for key in first_of if key not in by_hash]
        if missing:
            existing = conn.execute(
                select(Image.id, Image.tenant, Image.sha256).where(
                    tuple_(Image.tenant, Image.sha256).in_(missing)
                )
            )
            by_hash.update({(r.tenant, bytes(r.sha256)): r.id for r in existing})
    if unhashed:
        plain = pg_insert(Image).returning(Image.id, sort_by_parameter_order=True)
        values = [_image_values(rows[i], products[(rows[i].tenant, rows[i].product_id)]) for i in unhashed]
        for index, new in zip(unhashed, conn.execute(plain, values), strict=True):
            ids[index] = new.id
            created[index] = True
    for index, row in enumerate(rows):
        if row.info is not None:
            ids[index] = by_hash[(row.tenant, row.info.sha256)]

    # every row links its image to its product (a stored image shared by another product gets
    # that image's embeddings); a new image's vector goes to each product of the call that has it
    pairs = [
        (int(image_id), products[(row.tenant, row.product_id)], row.tenant)
        for image_id, row in zip(ids, rows, strict=True)
        if image_id is not None
    ]
    added = set(links.link(conn, pairs))
    for index, pair in enumerate(pairs):  # the first row giving a stored image another product
        if pair in added and not created[index]:
            shared[index] = True
        added.discard(pair)
    vector_of = {
        ids[i]: row.embedding for i, row in enumerate(rows) if created[i] and row.embedding is not None
    }
    embeddings = [
        {"model_id": model.id, "image_id": image_id, "product_pk": pk, "tenant": tenant, "embedding": vector}
        for image_id, pk, tenant in dict.fromkeys(pairs)
        for vector in (vector_of.get(image_id),)
        if vector is not None
    ]
    if embeddings:
        conn.execute(pg_insert(Embedding), embeddings)
    return Written([int(i) for i in ids if i is not None], created, shared)


def link_rows(conn: Connection, copies: list[tuple[int, int]], ids: list[int]) -> None:
    """Set ``duplicate_of`` for rows of one call that copy another row of it: ``copies`` holds
    (row, row it copies) positions in ``ids``. A row whose image already existed keeps its link."""
    duplicates.set_where_unset(
        conn, "duplicate_of", {ids[row]: ids[of] for row, of in copies if ids[row] != ids[of]}
    )


def chunks(rows: list[PreparedRow], size: int = WRITE_CHUNK) -> Iterable[list[PreparedRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
