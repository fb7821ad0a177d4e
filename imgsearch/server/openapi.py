"""The OpenAPI schema as clients see the API: bodies the routes parse themselves (uploads, search)
are in ``components``, and every error is a problem (RFC 9457), not FastAPI's default shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from imgsearch.server import schemas


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="The problem's type: GET it for what it means, e.g. /problems/not-found.")
    title: str
    status: int
    detail: str = Field(description="What is wrong, naming the value and what was expected.")
    request_id: str | None = Field(None, description="The request's id, as in the server's logs.")
    index: int | None = Field(None, description="A batch's item at fault (its position).")
    errors: list[dict[str, str]] | None = Field(
        None, description="A request that doesn't fit the schema: each problem's location and message."
    )
    uri: str | None = Field(None, description="A thumbnail of an image uploaded by URL: the image's URL.")


# bodies parsed by the routes themselves (with pydantic's own JSON parser), not FastAPI's
EXTRA_MODELS: tuple[type[BaseModel], ...] = (
    Problem,
    schemas.UploadRequest,
    schemas.SearchRequest,
    schemas.SearchOptions,
)

ERRORS = {
    "400": "Invalid input: a value is wrong",
    "401": "No key, or a malformed, unknown or revoked one",
    "403": "A tenant's key named a tenant",
    "404": "No such image, product or route (another tenant's alike)",
    "413": "A body or a batch over the limit",
    "422": "The request doesn't fit the schema",
    "503": "A transient fault (the database away): retry after Retry-After seconds",
}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the extra models and problem responses."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in EXTRA_MODELS:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    for path, item in schema["paths"].items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            codes = ERRORS if path.startswith("/v1/") else {"503": ERRORS["503"]} if path == "/readyz" else {}
            for code, description in codes.items():
                responses[code] = _problem_response(description)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
