"""``/v1/status``: images per state, the oldest one waiting, the latest failures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from imgsearch.server import schemas
from imgsearch.server.deps import CatalogDep, PrincipalDep, tenant_of
from imgsearch.work import progress, wake

router = APIRouter(prefix="/v1", tags=["status"])


@router.get("/status", response_model=schemas.StatusResponse, summary="Embedding progress and errors")
def status(
    catalog: CatalogDep,
    principal: PrincipalDep,
    errors: Annotated[int, Query(ge=0, le=100, description="How many of the latest failures.")] = 20,
    tenant: Annotated[
        str | None,
        Query(description="Admin keys only: one tenant's images.", json_schema_extra=schemas.NAME_SCHEMA),
    ] = None,
) -> Response:
    """Counts of the tenant's images per state (an admin key: every tenant's, or `tenant`'s), how
    long the oldest pending one has waited, and the latest failures with their errors."""
    current = progress.status(catalog.engine, errors, tenant=tenant_of(principal, tenant))
    body = {
        "model": catalog.model,
        "dim": catalog.dim,
        "counts": current.counts,
        "oldest_pending_seconds": current.oldest_pending_seconds,
        "failed": [
            {
                "image_id": image_id,
                "tenant": owner,
                "product_id": current.products.get(image_id),
                "error": error,
            }
            for image_id, owner, error in current.latest_errors
        ],
    }
    if principal.admin:  # the queue is every tenant's: only admins see how busy it is
        body["queue_depth"] = wake.queue_depth(catalog.settings.redis_url, catalog.settings.queue)
    return JSONResponse(body)
