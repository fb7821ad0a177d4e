"""``/v1/webhooks``: a tenant's endpoints, their secrets and replays (:mod:`imgsearch.hooks`).
A tenant's key acts for its tenant; an admin key names one (``tenant``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imgsearch.errors import InvalidInput
from imgsearch.ingest import checks
from imgsearch.server.deps import CatalogDep, PrincipalDep, json_body, json_body_schema, tenant_of
from imgsearch.server.schemas import NAME_SCHEMA
from imgsearch.server.webhook_schemas import (
    ReplayRequest,
    ReplayResponse,
    WebhookCreated,
    WebhookRequest,
    WebhooksResponse,
)

router = APIRouter(prefix="/v1", tags=["webhooks"])

EndpointIdPath = Annotated[
    int, Path(description="A webhook endpoint's id.", json_schema_extra={"minimum": 1, "maximum": checks.MAX_ID})
]
TenantQuery = Annotated[
    str | None,
    Query(description="The tenant, with an admin key (a tenant's key acts for its own).", json_schema_extra=NAME_SCHEMA),
]


def _shop(principal: Any, requested: Any) -> str:
    tenant = tenant_of(principal, requested)
    if tenant is None:
        raise InvalidInput("an admin key names the tenant of its webhooks: `tenant`")
    return tenant


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Add a webhook endpoint",
    openapi_extra=json_body_schema(WebhookRequest),
)
async def add_webhook(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Events of the tenant (`image.ready`, `image.failed`, ...) are posted to `url`, signed as
    Standard Webhooks says (`webhook-id`, `webhook-timestamp`, `webhook-signature`) under the
    secret in the answer, which is shown this once."""
    body = await json_body(request, WebhookRequest)
    tenant = _shop(principal, body.tenant)
    created = await run_in_threadpool(lambda: catalog.webhooks.add(body.url, tenant=tenant, events=body.events))
    return JSONResponse({"id": created.id, "secret": created.secret}, status_code=201)


@router.get("/webhooks", response_model=WebhooksResponse, summary="List webhook endpoints")
def list_webhooks(catalog: CatalogDep, principal: PrincipalDep, tenant: TenantQuery = None) -> Response:
    """The tenant's endpoints (an admin key without `tenant`: every tenant's), never their secrets,
    with their deliveries pending, delivered and given up on."""
    found = catalog.webhooks.list(tenant_of(principal, tenant))
    return JSONResponse({"endpoints": [endpoint.as_dict() for endpoint in found]})


@router.delete("/webhooks/{endpoint_id}", status_code=204, summary="Remove a webhook endpoint")
def remove_webhook(
    endpoint_id: EndpointIdPath, catalog: CatalogDep, principal: PrincipalDep, tenant: TenantQuery = None
) -> Response:
    """Remove the endpoint and its deliveries still to go."""
    catalog.webhooks.remove(endpoint_id, tenant=_shop(principal, tenant))
    return Response(status_code=204)


@router.post(
    "/webhooks/{endpoint_id}/rotate-secret", response_model=WebhookCreated, summary="Rotate an endpoint's secret"
)
def rotate_webhook_secret(
    endpoint_id: EndpointIdPath, catalog: CatalogDep, principal: PrincipalDep, tenant: TenantQuery = None
) -> Response:
    """A new secret, shown this once; for a day deliveries are signed under the old one too. A
    disabled endpoint is enabled again."""
    rotated = catalog.webhooks.rotate_secret(endpoint_id, tenant=_shop(principal, tenant))
    return JSONResponse({"id": rotated.id, "secret": rotated.secret})


@router.post(
    "/webhooks:replay",
    response_model=ReplayResponse,
    summary="Resend a time range of events",
    openapi_extra=json_body_schema(ReplayRequest),
)
async def replay_webhooks(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """Queue the tenant's events from `since` to `until` again, to each endpoint taking them."""
    body = await json_body(request, ReplayRequest)
    tenant = _shop(principal, body.tenant)
    queued = await run_in_threadpool(
        lambda: catalog.webhooks.replay(tenant=tenant, since=body.since, until=body.until, endpoint_id=body.endpoint_id)
    )
    return JSONResponse({"queued": queued})
