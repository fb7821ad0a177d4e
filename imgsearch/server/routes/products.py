"""``/v1/products``: a product's fields (price, category, currency, attributes), a feed of many
products, and deletes of a product with all its images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imgsearch.errors import ImgSearchError, InvalidInput
from imgsearch.ingest import checks
from imgsearch.server import schemas
from imgsearch.server.deps import CatalogDep, PrincipalDep, json_body, json_body_schema, tenant_of
from imgsearch.server.limits import Limits
from imgsearch.server.problems import RequestTooLarge

router = APIRouter(prefix="/v1", tags=["products"])

AdminTenant = Annotated[
    str | None,
    Query(description="Admin keys only: the product's tenant.", json_schema_extra=schemas.NAME_SCHEMA),
]
ProductIdPath = Annotated[str, Path(description="The product's id.", json_schema_extra=schemas.NAME_SCHEMA)]


def _required_tenant(tenant: str | None) -> str:
    """An admin key names the product's tenant: product ids are per tenant."""
    if tenant is None:
        raise InvalidInput(
            "an admin key names the product's tenant: give `tenant` (product ids are per tenant)"
        )
    return tenant


@router.patch(
    "/products/{product_id:path}",
    response_model=schemas.ProductChangeResponse,
    summary="Change a product's price, category, currency or attributes",
    openapi_extra=json_body_schema(schemas.ProductChange),
)
async def update_product(
    product_id: ProductIdPath, request: Request, catalog: CatalogDep, principal: PrincipalDep
) -> Response:
    """Set the fields given (`null` clears one; attributes are replaced whole) without uploading
    images again; fields left out keep their values. Searches filter on the new values at once."""
    change = await json_body(request, schemas.ProductChange)
    fields: dict[str, Any] = {name: getattr(change, name) for name in change.model_fields_set - {"tenant"}}
    tenant = _required_tenant(tenant_of(principal, change.tenant))
    changed = await run_in_threadpool(lambda: catalog.update_product(product_id, tenant=tenant, **fields))
    return JSONResponse({"product_id": checks.identifier(product_id, "product_id"), "changed": changed})


@router.post(
    "/products:update",
    response_model=schemas.ProductFeedResponse,
    summary="Apply a feed of product changes, all or nothing",
    openapi_extra=json_body_schema(schemas.ProductFeedRequest),
)
async def update_products(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Every item is checked and every product looked up before anything is written: a bad item
    or an unknown product fails the feed (its index in `index`) with nothing changed."""
    feed = await json_body(request, schemas.ProductFeedRequest)
    limits: Limits = request.app.state.limits
    if len(feed.items) > limits.max_items:
        raise RequestTooLarge(f"{len(feed.items)} items in one feed; the limit is {limits.max_items}")
    rows = []
    for index, item in enumerate(feed.items):
        try:
            tenant = _required_tenant(tenant_of(principal, item.tenant))
        except ImgSearchError as exc:
            exc.at_row(index)
            raise
        fields = {name: getattr(item, name) for name in item.model_fields_set - {"tenant"}}
        rows.append({**fields, "tenant": tenant})
    updated = await run_in_threadpool(lambda: catalog.update_products(rows, progress=False))
    return JSONResponse({"updated": updated, "unchanged": len(rows) - updated})


@router.delete(
    "/products/{product_id:path}",
    response_model=schemas.ProductDeleteResponse,
    summary="Delete a product with all its images",
)
def delete_product(
    product_id: ProductIdPath, catalog: CatalogDep, principal: PrincipalDep, tenant: AdminTenant = None
) -> Response:
    """Delete the product, its images and their embeddings. An image another product shares stays
    that product's; `deleted_images` counts the images the product had."""
    owner = _required_tenant(tenant_of(principal, tenant))
    deleted = catalog.delete_product(product_id, tenant=owner)
    return JSONResponse(
        {"product_id": checks.identifier(product_id, "product_id"), "deleted_images": deleted}
    )
