"""``/v1/events``: shoppers' impressions, clicks, add-to-carts and purchases on a search's hits,
in batches (:mod:`imgsearch.learning.events`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imgsearch.catalog import Catalog
from imgsearch.server import schemas
from imgsearch.server.deps import CatalogDep, PrincipalDep, json_body, json_body_schema, tenant_of

router = APIRouter(prefix="/v1", tags=["search"])


def _record(catalog: Catalog, tenant: str | None, body: schemas.EventsRequest) -> Response:
    events = [event.model_dump(exclude_none=True) for event in body.events]
    found = catalog.record_events(tenant, events)
    return JSONResponse({"recorded": found.recorded, "duplicates": found.duplicates})


@router.post(
    "/events",
    response_model=schemas.EventsResponse,
    summary="Record shoppers' feedback on a search's hits",
    openapi_extra=json_body_schema(schemas.EventsRequest),
)
async def events(request: Request, catalog: CatalogDep, principal: PrincipalDep) -> Response:
    """A batch of events, each naming its search (`query_id`), the hit acted on (`object_id` at
    `position`) and the `action`. All or none: a batch with a bad event records nothing, and the
    answer lists each bad event's `index` and `error` (an unknown search, or another tenant's, a
    position beyond the search's hits, a time in the future). Boosts learned from them lift what
    shoppers prefer in later searches."""
    body = await json_body(request, schemas.EventsRequest)
    return await run_in_threadpool(_record, catalog, tenant_of(principal), body)
