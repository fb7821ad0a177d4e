"""The OpenAPI schema as clients see the API, stating what the server enforces: bodies the routes
parse themselves (uploads, search) are in ``components``; values carry the library's rules
(names, prices, currencies, the model's dimension, the page's bounds, exactly one query); every
error is a problem (RFC 9457) with its headers; optional fields have no ``default: null`` (a
strict generated client would take them for required).

The rules the schema language can't state (``price_min`` not above ``price_max``, a box inside its
image, an image URL that resolves) are in the descriptions, and answer 400 naming them."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from imgsearch.search.filters import MAX_K
from imgsearch.search.look import MAX_OBJECTS
from imgsearch.search.request import MAX_EXPAND
from imgsearch.server import schemas, webhook_schemas


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The problem's type: GET it for what it means, e.g. /problems/not-found.")
    title: str
    status: int
    detail: str = Field(description="What is wrong, naming the value and what was expected.")
    request_id: str | None = Field(None, description="The request's id, as in the server's logs.")
    index: int | None = Field(None, description="A batch's item at fault (its position).")
    errors: list[dict[str, str | int]] | None = Field(
        None,
        description="A request that doesn't fit the schema: each problem's location and message; "
        "invalid-events: each bad event's index and error.",
    )
    uri: str | None = Field(None, description="A thumbnail of an image uploaded by URL: the image's URL.")
    image_id: int | None = Field(None, description="duplicate-image: the stored image the upload copies.")
    product_id: str | None = Field(None, description="duplicate-image: that image's product.")
    row: int | None = Field(None, description="duplicate-image: the earlier item of the request it copies.")
    checks: dict[str, str] | None = Field(None, description="/readyz: each check and its state.")


class Ready(BaseModel):
    status: str = Field(description="`ready`.")
    checks: dict[str, str] = Field(description="database, migrations and model: `ok` or `not required`.")


# bodies parsed by the routes themselves (with pydantic's own JSON parser), not FastAPI's
EXTRA_MODELS: tuple[type[BaseModel], ...] = (
    Problem,
    Ready,
    schemas.UploadRequest,
    schemas.SearchRequest,
    schemas.SearchOptions,
    schemas.DeleteImagesRequest,
    schemas.ProductChange,
    schemas.ProductFeedRequest,
    schemas.EventsRequest,
    webhook_schemas.WebhookRequest,
    webhook_schemas.ReplayRequest,
)

ERRORS = {
    "400": "Invalid input: a value is wrong",
    "401": "No key, or a malformed, unknown or revoked one",
    "403": "A tenant's key named a tenant",
    "404": "No such image, product or route (another tenant's alike)",
    "405": "The path exists with other methods: `Allow` lists them",
    "413": "A body or a batch over the limit",
    "415": "A body that isn't JSON (or multipart where a route takes files)",
    "422": "The request doesn't fit the schema",
    "503": "A transient fault (the database away): retry after Retry-After seconds",
}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id (the client's `X-Request-ID` when it is 1-64 of `A-Za-z0-9._:-`), "
        "as in the server's logs.",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"description": 'Bearer realm="imgsearch"', "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
    "Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}},
    "ETag": {
        "description": "The thumbnail's version: send it back in `If-None-Match`.",
        "schema": {"type": "string"},
    },
}
STATUS_HEADERS = {"401": "WWW-Authenticate", "503": "Retry-After", "405": "Allow"}

FILE = {"type": "string", "format": "binary", "contentMediaType": "image/*"}
NUMBER_TEXT = rf"{schemas.SPACES}[0-9]+(\.[0-9]+)?{schemas.SPACES}"
BOX_TEXT = rf"^{NUMBER_TEXT}(,{NUMBER_TEXT}){{3}}$"


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _vector(dim: int) -> dict[str, Any]:
    """A vector of the active model: ``dim`` numbers, not all zero."""
    return {
        "type": "array",
        "items": {"type": "number"},
        "minItems": dim,
        "maxItems": dim,
        "not": {"type": "array", "items": {"const": 0}},
        "description": f"{dim} numbers (the active model's dimension when this schema was made), not all zero.",
    }


# a form field left blank (as an HTML form sends it) is not given
BLANK = {"type": "string", "pattern": rf"^{schemas.SPACES}$"}
FORM_BOOLEAN = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}


def _field(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An optional form field: the value, or blank for none."""
    field: dict[str, Any] = {"anyOf": [schema, BLANK]}
    if description:
        field["description"] = description
    return field


def _upload_form(max_items: int) -> dict[str, Any]:
    """The multipart upload: images of one product, its fields as form fields."""
    return {
        "type": "object",
        "required": ["file", "product_id"],
        "additionalProperties": False,
        "properties": {
            "file": {
                "type": "array",
                "items": FILE,
                "minItems": 1,
                "maxItems": max_items,
                "description": "Images of the product.",
            },
            "product_id": {"type": "string", **schemas.NAME_SCHEMA},
            "category": _field({"type": "string", **schemas.NAME_SCHEMA}),
            "price": _field({"$ref": "#/components/schemas/Price"}),
            "currency": _field({"type": "string", "pattern": schemas.CURRENCY_PATTERN}),
            "attributes": _field({"$ref": "#/components/schemas/Attributes"}),
            "tenant": _field({"type": "string", **schemas.NAME_SCHEMA}, "Admin keys only, and required."),
        },
    }


def _search_form() -> dict[str, Any]:
    """The multipart image search: the query image, and its options as one JSON `params` part or
    as form fields, or both (``min_probability`` is for text queries)."""
    fields: dict[str, Any] = {
        "tenant": _field({"type": "string", **schemas.NAME_SCHEMA}, "Admin keys only."),
        "category": {
            "anyOf": [
                {"type": "string", **schemas.NAME_SCHEMA},
                BLANK,
                {"type": "array", "items": {"type": "string", **schemas.NAME_SCHEMA}, "minItems": 1},
            ],
            "description": "A category, or the field repeated for any of several.",
        },
        "price_min": _field({"$ref": "#/components/schemas/PriceBound"}),
        "price_max": _field({"$ref": "#/components/schemas/PriceBound"}),
        "attributes": _field({"$ref": "#/components/schemas/Attributes"}),
        "k": _field({"type": "integer", "minimum": 1, "maximum": MAX_K}),
        "offset": _field({"type": "integer", "minimum": 0, "maximum": 10 * MAX_K}),
        "group_by_product": _field(FORM_BOOLEAN),
        "diversity": _field({"type": "number", "minimum": 0, "maximum": 1}),
        "expand": _field({"type": "integer", "minimum": 1, "maximum": MAX_EXPAND}),
        "min_score": _field({"type": "number", "minimum": -1, "maximum": 1}),
        "box": _field({"type": "string", "pattern": BOX_TEXT}, "x0,y0,x1,y1 in the image's pixels."),
        "consistent": _field(FORM_BOOLEAN),
        "regions": _field(FORM_BOOLEAN),
    }
    params = {
        "allOf": [
            {"$ref": "#/components/schemas/SearchOptions"},
            {"properties": {"min_probability": {"type": "null"}}},
        ],
        "description": "The filters and options as one JSON object; a form field takes the place of "
        "the same key.",
    }
    return {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {"file": FILE, "params": params, **fields},
    }


def _look_form() -> dict[str, Any]:
    """Shop the look's multipart form: the photo, and its few options as form fields or one JSON
    `params` part."""
    search = _search_form()["properties"]
    fields = {name: search[name] for name in ("tenant", "category", "price_min", "price_max", "k", "regions")}
    fields["objects"] = _field({"type": "integer", "minimum": 1, "maximum": MAX_OBJECTS}, "How many objects at most.")
    category = {"anyOf": [{"type": "string", **schemas.NAME_SCHEMA}, {"type": "array", "items": {"type": "string", **schemas.NAME_SCHEMA}, "minItems": 1}]}
    params = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "tenant": {"type": "string", **schemas.NAME_SCHEMA},
            "category": category,
            "price_min": {"$ref": "#/components/schemas/PriceBound"},
            "price_max": {"$ref": "#/components/schemas/PriceBound"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
            "regions": {"type": "boolean"},
            "objects": {"type": "integer", "minimum": 1, "maximum": MAX_OBJECTS},
        },
        "description": "The options as one JSON object; a form field takes the place of the same key.",
    }
    return {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {"file": FILE, "params": params, **fields},
    }


def _refer(node: Any) -> None:
    """``{"x-component": NAME, ...}`` (what a model's type says) as ``{"$ref": ...}`` to that component."""
    if isinstance(node, dict):
        name = node.pop("x-component", None)
        if name is not None:
            node["$ref"] = f"#/components/schemas/{name}"
        for value in node.values():
            _refer(value)
    elif isinstance(node, list):
        for value in node:
            _refer(value)


def _drop_null_defaults(node: Any) -> None:
    """An optional field has no ``default: null``: openapi-typescript (and other generators) take
    a field with a default for one a response always has, or a request must carry."""
    if isinstance(node, dict):
        if node.get("default", 0) is None:
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)


# bodies clients send: a field with a default is one they may leave out
REQUESTS = (
    "UploadRequest",
    "UploadItem",
    "SearchRequest",
    "SearchOptions",
    "DeleteImagesRequest",
    "ProductChange",
    "ProductFeedRequest",
    "ProductFeedItem",
    "EventsRequest",
    "EventItem",
    "WebhookRequest",
    "ReplayRequest",
)


def _defaults_in_words(component: dict[str, Any]) -> None:
    """A request's defaults in its fields' descriptions, not as ``default``: openapi-typescript
    makes a component's field with a default required, even in a request body."""
    for field in component.get("properties", {}).values():
        if "default" in field:
            value = field.pop("default")
            words = f"Default: `{json.dumps(value)}`."
            field["description"] = f"{field['description']} {words}" if field.get("description") else words


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the extra models, the rules the library enforces, and problems."""
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
    components["JsonValue"] = schemas.JSON_VALUE
    components["Attributes"] = schemas.ATTRIBUTES_SCHEMA
    components["Price"] = schemas.PRICE_SCHEMA
    components["PriceBound"] = schemas.PRICE_BOUND_SCHEMA
    components["Problem"]["required"] = ["type", "title", "status", "detail"]
    _drop_null_defaults(schema)
    for name in REQUESTS:
        _defaults_in_words(components[name])
    catalog = getattr(app.state, "catalog", None)
    if catalog is not None:
        for name, field in (("SearchRequest", "vector"), ("UploadItem", "embedding")):
            components[name]["properties"][field] = {"anyOf": [_vector(catalog.dim), {"type": "null"}]}
    limits = app.state.limits
    for name, field in (
        ("UploadRequest", "items"),
        ("ProductFeedRequest", "items"),
        ("DeleteImagesRequest", "ids"),
    ):
        components[name]["properties"][field]["maxItems"] = limits.max_items
    paths = schema["paths"]
    upload = paths["/v1/images"]["post"]["requestBody"]["content"]
    upload["multipart/form-data"] = {
        "schema": _upload_form(limits.max_items),
        "encoding": {"attributes": {"contentType": "application/json"}},
    }
    paths["/v1/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"] = {
        "schema": _search_form(),
        "encoding": {
            "params": {"contentType": "application/json"},
            "attributes": {"contentType": "application/json"},
        },
    }
    paths["/v1/search/look"]["post"]["requestBody"]["content"]["multipart/form-data"] = {
        "schema": _look_form(),
        "encoding": {"params": {"contentType": "application/json"}},
    }
    thumbnail = paths["/v1/images/{image_id}/thumbnail"]["get"]["responses"]
    thumbnail["200"] = {
        "description": "The thumbnail, a JPEG",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {"ETag": HEADERS["ETag"]},
    }
    thumbnail["304"] = {
        "description": "Not modified (`If-None-Match` named its ETag)",
        "headers": {"ETag": HEADERS["ETag"]},
    }
    paths["/readyz"]["get"]["responses"]["200"] = {
        "description": "Ready",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}},
    }
    paths["/healthz"]["get"]["responses"]["200"]["content"] = {
        "application/json": {
            "schema": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}
        }
    }
    paths["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus' text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            codes = dict(ERRORS) if path.startswith("/v1/") else {"405": ERRORS["405"]}
            if path == "/readyz":
                codes["503"] = ERRORS["503"]
            if "requestBody" not in operation:
                codes.pop("415", None)
            if path == "/v1/images" and method == "post":
                codes["409"] = "on_duplicate=reject: the upload is a near-copy of another product's image"
            if path == "/v1/webhooks" and method == "post":
                codes["409"] = "The tenant has as many endpoints as it may (20)"
            for code, description in codes.items():
                responses[code] = _problem_response(description)
            for code, response in responses.items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = HEADERS["X-Request-ID"]
                if code in STATUS_HEADERS:
                    headers[STATUS_HEADERS[code]] = HEADERS[STATUS_HEADERS[code]]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    _refer(schema)
    _drop_null_defaults(schema)
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
