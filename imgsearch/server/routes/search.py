"""``/v1/search``: text, vector, image URL, "more like this" image or product, or (multipart) an
uploaded query image, with every filter and option of ``catalog.search``; ``/v1/categories``."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from imgsearch.access.keys import Principal
from imgsearch.catalog import Catalog
from imgsearch.errors import InvalidInput, InvalidQuery
from imgsearch.ingest import checks
from imgsearch.records import Hit, SearchResult
from imgsearch.search.look import MAX_OBJECTS
from imgsearch.server import schemas
from imgsearch.server.deps import CatalogDep, PrincipalDep, json_body, json_body_schema, tenant_of

router = APIRouter(prefix="/v1", tags=["search"])

OPTIONS = tuple(name for name in schemas.SearchOptions.model_fields if name != "tenant")
_IMAGE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "The query image."},
                    "params": {
                        "type": "string",
                        "description": "The filters and options as one JSON object (SearchOptions; `mode`, "
                        "if given, `semantic`); or give them as form fields of their own.",
                    },
                    **{
                        name: {"type": "string", "description": "As in SearchOptions."}
                        for name in schemas.SearchOptions.model_fields
                    },
                    "mode": {
                        "type": "string",
                        "enum": ["semantic"],
                        "description": "Image queries are semantic.",
                    },
                },
            }
        }
    },
}


def hit_json(hit: Hit) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image_id": hit.image_id,
        "product_id": hit.product_id,
        "tenant": hit.tenant,
        "category": hit.category,
        "price": None if hit.price is None else float(hit.price),
        "currency": hit.currency,
        "title": hit.title,
        "brand": hit.brand,
        "distance": hit.distance,
        "score": hit.score,
        "matched_by": hit.matched_by,
    }
    if hit.probability is not None:
        body["probability"] = hit.probability
    if hit.relevance is not None:
        body["relevance"] = hit.relevance
    if hit.boost is not None:
        body["boost"] = hit.boost
    body["region"] = hit.region
    return body


def _number_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def result_json(result: SearchResult) -> dict[str, Any]:
    """A search's answer as the API returns it (``SearchResponse``)."""
    body: dict[str, Any] = {
        "query_id": result.query_id,
        "hits": [hit_json(hit) for hit in result],
        "total": result.total,
        "total_relation": result.total_relation,
        "mode": result.mode,
    }
    if result.notice is not None:
        body["notice"] = result.notice
    if result.facets is not None:
        facets = result.facets.as_json()
        facets["price"] = [{**b, "from": float(b["from"]), "to": float(b["to"])} for b in facets["price"]]
        body["facets"] = facets
    if result.understood is not None:
        understood = result.understood.as_json()
        for name in ("price_min", "price_max"):
            if name in understood:
                understood[name] = _number_or_none(understood[name])
        body["understood"] = understood
    return body


def _search(
    catalog: Catalog, principal: Principal, query: dict[str, Any], options: schemas.SearchOptions
) -> Response:
    kwargs = {name: getattr(options, name) for name in OPTIONS}
    result = catalog.search(**query, tenant=tenant_of(principal, options.tenant), **kwargs)
    return JSONResponse(result_json(result))


@router.post(
    "/search",
    response_model=schemas.SearchResponse,
    summary="Hybrid search",
    openapi_extra=json_body_schema(schemas.SearchRequest),
)
async def search(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """The `k` nearest images (after `offset`) that match every filter, nearest first. Give
    exactly one query. `min(k, matching images)` hits, with recall against an exact search of at
    least 0.98 at every filter's selectivity."""
    body = await json_body(request, schemas.SearchRequest)
    queries = {
        "text": body.text,
        "vector": body.vector,
        "image": body.image_url,
        "similar_to": body.similar_to,
        "similar_to_product": body.similar_to_product,
    }
    given = {name: value for name, value in queries.items() if value is not None}
    if len(given) != 1:
        names = sorted(("image_url" if name == "image" else name) for name in queries)
        shown = sorted(("image_url" if name == "image" else name) for name in given)
        raise InvalidQuery(f"give exactly one query of {names}, got {shown or 'none'}")
    if "image" in given:
        # a URL only: the library reads any other string as a path on this machine
        given["image"] = checks.url(str(given["image"]), "image_url", InvalidQuery)
    return await run_in_threadpool(_search, catalog, principal, given, body)


FORM_TRUE = frozenset({"true", "1", "yes", "on"})  # what forms and curl -F send for a checkbox
FORM_FALSE = frozenset({"false", "0", "no", "off"})


def _form_options(form: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The filters and options of a multipart search: a JSON ``params`` part and form fields, a
    field taking the place of the same key in ``params`` (``extra``: fields of its own, as text)."""
    allowed = {"file", "params", *schemas.SearchOptions.model_fields, *extra}
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise InvalidInput(f"unknown form fields {unknown}; allowed: {sorted(allowed)}")
    params = form.get("params")
    values: dict[str, Any] = {}
    if params is not None and (not isinstance(params, str) or params.strip()):
        if not isinstance(params, str):
            raise InvalidInput("`params` must be a JSON object as text, not a file")
        try:
            values = json.loads(params)
        except ValueError as exc:
            raise InvalidInput(f"`params` must be a JSON object: {exc}") from exc
        if not isinstance(values, dict):
            raise InvalidInput("`params` must be a JSON object")
    for name in (*schemas.SearchOptions.model_fields, *extra):
        given = form.getlist(name)
        if len(given) > 1 and name != "category":  # only categories add up to a list
            raise InvalidQuery(f"form field {name!r} is given {len(given)} times")
        found = [v for v in given if isinstance(v, str) and v.strip()]
        if not found:
            continue
        if name == "category":
            values[name] = found if len(found) > 1 else found[0]
        elif name == "attributes":
            try:
                values[name] = json.loads(found[0])
            except ValueError as exc:
                raise InvalidInput(f"attributes must be a JSON object: {exc}") from exc
        elif name in ("k", "offset", "expand"):
            values[name] = _number(found[0], name, int)
        elif name in ("diversity", "min_score", "min_probability"):
            values[name] = _number(found[0], name, float)
        elif name == "box":
            values[name] = [_number(part, name, float) for part in found[0].split(",")]
        elif name == "total" and found[0].strip().isdigit():  # a bound: count up to that many
            values[name] = _number(found[0], name, int)
        elif name in ("group_by_product", "consistent", "parse", "facets", "total", "boost", "adapter", "regions"):
            flag = found[0].strip().lower()
            if flag not in FORM_TRUE | FORM_FALSE:
                raise InvalidQuery(
                    f"{name} must be one of {sorted(FORM_TRUE | FORM_FALSE)}, got {found[0]!r}"
                )
            values[name] = flag in FORM_TRUE
        else:
            values[name] = found[0]
    return values


async def _form_with_file(request: Request, what: str) -> tuple[Any, bytes]:
    """A multipart form and the bytes of its one ``file`` part (``what`` it is, for the errors)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise HTTPException(415, f"send {what} as multipart/form-data with a `file` part, not {media_type!r}")
    form = await request.form(max_files=2, max_fields=40)
    files = form.getlist("file")
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        raise InvalidInput(f"give exactly one `file` part, {what} (got {len(files)})")
    return form, await files[0].read()


def _form_search_options(values: dict[str, Any]) -> schemas.SearchOptions:
    """A form's options checked as ``SearchOptions``; a mistake is a 422 naming the body's field."""
    try:
        return schemas.SearchOptions.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


def _number(text: str, name: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError as exc:
        raise InvalidQuery(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from exc


@router.post(
    "/search/image",
    response_model=schemas.SearchResponse,
    summary="Search with an uploaded query image",
    openapi_extra={"requestBody": _IMAGE_BODY},
)
async def search_image(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Image to image: a multipart `file` part is the query; filters and options come as form
    fields, or as one JSON `params` part."""
    form, image = await _form_with_file(request, "the query image")
    options = _form_search_options(_form_options(form))
    return await run_in_threadpool(_search, catalog, principal, {"image": image}, options)


# what shop the look takes of the search's fields (each object is an image query of its crop)
LOOK_OPTIONS = ("category", "price_min", "price_max", "k", "regions")
# its form's schema: imgsearch.server.openapi._look_form
_LOOK_BODY: dict[str, Any] = {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object"}}}}


def _look(
    catalog: Catalog, principal: Principal, image: bytes, options: schemas.SearchOptions, objects: int
) -> Response:
    kwargs = {name: getattr(options, name) for name in LOOK_OPTIONS}
    looks = catalog.search_look(image=image, tenant=tenant_of(principal, options.tenant), objects=objects, **kwargs)
    found = [
        {"box": look.box, "label": look.label, "score": look.score, "hits": [hit_json(h) for h in look.hits]}
        for look in looks
    ]
    return JSONResponse({"objects": found})


@router.post(
    "/search/look",
    response_model=schemas.LookResponse,
    summary="Shop the look: a photo's objects, each searched",
    openapi_extra={"requestBody": _LOOK_BODY},
)
async def search_look(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """A multipart `file` part is a photo of a scene: its objects (the catalog's detector's, else
    its quarters and centre) are each searched with their crop; a detector's label that names a
    category of the shop filters that object's hits. Filters come as form fields or one JSON `params` part."""
    form, image = await _form_with_file(request, "the photo")
    values = _form_options(form, extra=("objects",))
    objects = values.pop("objects", MAX_OBJECTS)
    if isinstance(objects, str):
        objects = _number(objects, "objects", int)
    others = sorted(set(values) - {"tenant", *LOOK_OPTIONS})
    if others:
        raise InvalidQuery(f"shop the look takes {sorted(('objects', 'tenant', *LOOK_OPTIONS))}, not {others}")
    options = _form_search_options(values)
    return await run_in_threadpool(_look, catalog, principal, image, options, objects)


@router.get("/categories", response_model=schemas.CategoriesResponse, summary="The catalog's categories")
def categories(
    catalog: CatalogDep,
    principal: PrincipalDep,
    tenant: Annotated[
        str | None, Query(description="Admin keys only: one tenant's.", json_schema_extra=schemas.NAME_SCHEMA)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """The categories of the tenant's products and how many findable products (with an
    embedded image) each has, most first."""
    found = catalog.categories(tenant=tenant_of(principal, tenant), limit=limit)
    return JSONResponse({"categories": [{"name": name, "products": count} for name, count in found]})
