"""``/v1/images``: uploads (JSON of URLs or vectors, or multipart files), an image's state, its
thumbnail, deletes."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from imgsearch.access.keys import Principal
from imgsearch.errors import ImgSearchError, InvalidImage, InvalidInput
from imgsearch.ingest import checks, images
from imgsearch.server import schemas
from imgsearch.server.deps import JSON_TYPES, CatalogDep, PrincipalDep, json_body, json_body_schema, tenant_of
from imgsearch.server.limits import Limits
from imgsearch.server.problems import RequestTooLarge, problem

router = APIRouter(prefix="/v1", tags=["images"])

MAX_WAIT_SECONDS = 60  # a request holds a server thread while it waits

ImageIdPath = Annotated[
    int, Path(description="An image's id.", json_schema_extra={"minimum": 1, "maximum": checks.MAX_ID})
]

FORM_FIELDS = (
    "product_id", "category", "price", "currency", "attributes", "title", "description", "brand", "tenant"
)  # fmt: skip
THUMBNAIL_MAX_PX = 512

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/UploadRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "product_id"],
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more images of the product.",
                    },
                    "product_id": {"type": "string"},
                    "category": {"type": "string"},
                    "price": {"type": "string", "description": "A decimal number."},
                    "currency": {"type": "string"},
                    "attributes": {"type": "string", "description": "A JSON object."},
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "brand": {"type": "string"},
                    "tenant": {"type": "string", "description": "Admin keys only."},
                },
            }
        },
    },
}


def _json_rows(upload: schemas.UploadRequest, principal: Principal) -> list[dict[str, Any]]:
    rows = []
    for index, item in enumerate(upload.items):
        try:
            tenant = tenant_of(principal, item.tenant)
            url = None if item.url is None else checks.url(item.url, "url")
        except ImgSearchError as exc:
            exc.at_row(index)
            raise
        rows.append(
            {
                "image": url,
                "embedding": item.embedding,
                "tenant": tenant,
                "product_id": item.product_id,
                "category": item.category,
                "price": item.price,
                "currency": item.currency,
                "attributes": item.attributes,
                "title": item.title,
                "description": item.description,
                "brand": item.brand,
            }
        )
    return rows


async def _multipart_rows(request: Request, principal: Principal, limits: Limits) -> list[dict[str, Any]]:
    form = await request.form(max_files=limits.max_items, max_fields=len(FORM_FIELDS) + 10)
    unknown = sorted(set(form.keys()) - {"file", *FORM_FIELDS})
    if unknown:
        raise InvalidInput(f"unknown form fields {unknown}; allowed: {['file', *FORM_FIELDS]}")
    fields: dict[str, Any] = {}
    for name in FORM_FIELDS:
        values = form.getlist(name)
        if len(values) > 1:
            raise InvalidInput(f"form field {name!r} is given {len(values)} times")
        value = values[0] if values else None
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"form field {name!r} must be text, not a file")
        if value is not None and value.strip():
            fields[name] = value
    if "attributes" in fields:
        try:
            fields["attributes"] = json.loads(fields["attributes"])
        except ValueError as exc:
            raise InvalidInput(f"attributes must be a JSON object: {exc}") from exc
    tenant = tenant_of(principal, fields.pop("tenant", None))
    files = form.getlist("file")
    if not files:
        raise InvalidInput("a multipart upload needs one or more `file` parts")
    rows = []
    for index, part in enumerate(files):
        if not isinstance(part, UploadFile):
            raise InvalidImage("`file` must be a file part, not text").at_row(index)
        rows.append({"image": await part.read(), "tenant": tenant, **fields})
    return rows


@router.post(
    "/images",
    status_code=201,
    response_model=schemas.UploadResponse,
    summary="Upload images: JSON (URLs or vectors) or multipart files",
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_images(
    request: Request,
    catalog: CatalogDep,
    principal: PrincipalDep,
    on_duplicate: Annotated[
        Literal["keep", "link", "reject"],
        Query(
            description="A file that is a near-copy of an image of another product of the tenant: "
            "`keep` stores it, `link` stores it with `duplicate_of` set to that image, `reject` answers "
            "409 (`duplicate-image`, naming the image and product) and stores nothing."
        ),
    ] = "keep",
) -> Response:
    """Store a batch of images, all or nothing: a bad item fails the batch (its index in the
    problem's `index` and message), with nothing stored. JSON items give a `url` (a worker
    downloads and embeds it) or an `embedding` (stored as `ready`); multipart uploads give one or
    more `file` parts, images of one product whose fields are the form's other fields. Answers the
    image ids in the order given; the same bytes uploaded again by the tenant answer the stored
    image's id."""
    limits: Limits = request.app.state.limits
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        rows = await _multipart_rows(request, principal, limits)
    elif media_type in JSON_TYPES:
        rows = _json_rows(await json_body(request, schemas.UploadRequest), principal)
    else:
        raise HTTPException(415, f"send application/json or multipart/form-data, not {media_type!r}")
    if not rows:
        raise InvalidInput("nothing to upload: `items` is empty")
    if len(rows) > limits.max_items:
        raise RequestTooLarge(f"{len(rows)} items in one batch; the limit is {limits.max_items}")
    ids = await run_in_threadpool(lambda: catalog.add_many(rows, progress=False, on_duplicate=on_duplicate))
    return JSONResponse({"ids": ids}, status_code=201)


def _image_json(record: Any) -> dict[str, Any]:
    values = {"id": record.image_id, **record.__dict__}
    del values["image_id"]
    values["price"] = None if values["price"] is None else float(values["price"])
    for name in ("created_at", "updated_at"):
        values[name] = schemas.instant(values[name])
    return values


@router.get("/images/{image_id}", response_model=schemas.ImageResponse, summary="An image's state and error")
def get_image(
    image_id: ImageIdPath,
    catalog: CatalogDep,
    principal: PrincipalDep,
    wait: Annotated[
        float,
        Query(
            ge=0, le=MAX_WAIT_SECONDS,
            description="Seconds to wait, at most, for the image to be `ready` or `failed` before answering "
            "(PostgreSQL LISTEN/NOTIFY: the answer comes as soon as it is). 0: answer at once.",
        ),
    ] = 0,
) -> Response:
    """The image's state (`pending`, `embedding`, `ready`, `failed`), its error if it failed, and
    its product's fields. Another tenant's image answers 404, like a missing one. With `wait`,
    the answer waits until the image is ready or failed, or `wait` seconds have passed."""
    tenant = tenant_of(principal)
    if wait:
        catalog.wait_ready([image_id], tenant=tenant, timeout=wait)
    return JSONResponse(_image_json(catalog.get(image_id, tenant=tenant)))


@router.delete("/images/{image_id}", status_code=204, summary="Delete an image")
def delete_image(image_id: ImageIdPath, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Delete the image and its embeddings, from every product it belongs to; the products stay."""
    catalog.delete(image_id, tenant=tenant_of(principal))
    return Response(status_code=204)


@router.post(
    "/images:delete",
    response_model=schemas.DeletedResponse,
    summary="Delete many images",
    openapi_extra=json_body_schema(schemas.DeleteImagesRequest),
)
async def delete_images(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Delete every image listed, or none: one unknown id (or another tenant's) deletes nothing."""
    body = await json_body(request, schemas.DeleteImagesRequest)
    limits: Limits = request.app.state.limits
    if len(body.ids) > limits.max_items:
        raise RequestTooLarge(f"{len(body.ids)} ids in one batch; the limit is {limits.max_items}")
    tenant = tenant_of(principal)
    deleted = await run_in_threadpool(lambda: catalog.delete_many(body.ids, tenant=tenant))
    return JSONResponse({"deleted": deleted})


@router.get(
    "/images/{image_id}/thumbnail",
    summary="A JPEG thumbnail of a stored image",
    responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "Not modified (ETag)"}},
)
def thumbnail(
    image_id: ImageIdPath,
    request: Request,
    catalog: CatalogDep,
    principal: PrincipalDep,
    size: Annotated[int, Query(ge=16, le=THUMBNAIL_MAX_PX, description="Longest side, in pixels.")] = 256,
) -> Response:
    """The stored image scaled to fit `size` pixels, with an `ETag` (an image's bytes never
    change): a request with `If-None-Match` answers 304. An image uploaded by URL has no stored
    bytes: 404, with the URL in the problem's `uri`. Where the bytes were dropped after embedding
    (`IMGSEARCH_KEEP_CONTENT=false`), the 256 px thumbnail kept instead is served (never enlarged)."""
    tenant = tenant_of(principal)
    record = catalog.get(image_id, tenant=tenant)
    etag = f'"{record.image_id}-{(record.sha256 or "url")[:16]}-{size}"'
    cache = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=cache)
    content = catalog.image_preview(image_id, tenant=tenant)
    if content is None:
        how = "it was uploaded by URL" if record.uri else "it was stored as an embedding only"
        detail = f"image {image_id} has no stored bytes to make a thumbnail of: {how}"
        return problem(404, "not-found", "Not found", detail, request, uri=record.uri)
    settings = catalog.settings
    jpeg = images.thumbnail(content, size, images.Limits(len(content) + 1, settings.max_image_pixels))
    return Response(jpeg, media_type="image/jpeg", headers=cache)


@router.get(
    "/duplicates", response_model=schemas.DuplicatesResponse, summary="Near-duplicate images across products"
)
def list_duplicates(
    catalog: CatalogDep,
    principal: PrincipalDep,
    tenant: Annotated[
        str | None,
        Query(
            description="Admin keys: whose images (required for them).", json_schema_extra=schemas.NAME_SCHEMA
        ),
    ] = None,
    max_hamming: Annotated[
        int | None, Query(ge=0, le=32, description="Hash bits that may differ (default 10).")
    ] = None,
    max_distance: Annotated[
        float | None, Query(ge=0, le=2, description="Embedding cosine distance (default 0.1).")
    ] = None,
    hash_only: Annotated[bool, Query(description="Don't confirm pairs by embedding.")] = False,
) -> Response:
    """Groups of near-identical images of different products of the tenant: every pair of its
    images compared by perceptual hash, each confirmed by embedding distance. Each member has its
    hash bits and embedding distance to the group's first image. Compares all pairs: an
    occasional report, not a per-request call."""
    from imgsearch.ingest import duplicates

    owner = tenant_of(principal, tenant)
    if owner is None:
        raise InvalidInput("an admin key names the tenant whose duplicates to list: ?tenant=...")
    distance: float | duplicates.Unset | None = (
        None if hash_only else (duplicates.UNSET if max_distance is None else max_distance)
    )
    report = catalog.duplicates(owner, max_hamming=max_hamming, max_distance=distance, progress=False)
    return JSONResponse(
        {
            "groups": [
                [
                    {
                        "image_id": m.image_id,
                        "product_id": m.product_id,
                        "hamming": m.hamming,
                        "distance": m.distance,
                    }
                    for m in group.members
                ]
                for group in report.groups
            ],
            "images": report.images,
            "unhashed": report.unhashed,
            "unconfirmed": report.unconfirmed,
        }
    )
