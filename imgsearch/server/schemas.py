"""Request and response bodies of the HTTP API (its OpenAPI schema).

The models check shapes and JSON types only; values (names, prices, vectors, attributes) are
checked by the library, as for every other caller, so the same mistakes get the same messages.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.config import JsonDict

from imgsearch.ingest import checks
from imgsearch.search.facets import MAX_TRACK_TOTAL, TRACK_TOTAL
from imgsearch.search.filters import MAX_K
from imgsearch.search.request import MAX_EXPAND

# the answers, in a module of their own
from imgsearch.server.responses import CategoriesResponse as CategoriesResponse
from imgsearch.server.responses import CategoryResponse as CategoryResponse
from imgsearch.server.responses import EventsResponse as EventsResponse
from imgsearch.server.responses import FacetsResponse as FacetsResponse
from imgsearch.server.responses import FailedImage as FailedImage
from imgsearch.server.responses import HitResponse as HitResponse
from imgsearch.server.responses import LookResponse as LookResponse
from imgsearch.server.responses import PriceBucketResponse as PriceBucketResponse
from imgsearch.server.responses import SearchResponse as SearchResponse
from imgsearch.server.responses import StatusResponse as StatusResponse
from imgsearch.server.responses import UnderstoodResponse as UnderstoodResponse

# (pydantic can't refer to a component it didn't make: "x-component" becomes a $ref in openapi.build)
# What the library checks, stated in the schema (JSON Schema 2020-12, as OpenAPI 3.1 takes it), so
# a client generated from it sends what the server takes. The models don't enforce these: values
# are checked by the library, as for every other caller, with the same messages.
# spelled out rather than \s, whose meaning differs between regex engines: what Python's
# str.isspace() and strip() take for a space, as the library does
SPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
CONTROL = r"\u0000-\u001f\u007f"
SPACES = rf"[{SPACE}]*"  # and [0-9], not \d: Python's \d takes other scripts' digits too
# a name is stripped of the spaces around it (control characters among them) before it is checked
NAME_PATTERN = rf"^[{SPACE}]*[^{CONTROL}]*[^{SPACE}{CONTROL}][^{CONTROL}]*[{SPACE}]*$"
NAME_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": checks.MAX_NAME, "pattern": NAME_PATTERN}
TEXT_PATTERN = rf"^[^\u0000]*[^{SPACE}\u0000][^\u0000]*$"
# attribute documents: JSON whose strings hold no NUL (jsonb can't store one)
JSON_VALUE: dict[str, Any] = {  # one schema, not an anyOf: each keyword applies to its own type
    "type": ["string", "number", "boolean", "null", "array", "object"],
    "pattern": r"^[^\u0000]*$",
    # an array's items are JSON values too; said with `unevaluatedItems` (with no `items` beside it,
    # the same rule as `items`), which openapi-typescript renders `unknown[]`: of `items` it makes
    # `JsonValue[]`, a type TypeScript rejects as referring to itself (TS2502)
    "unevaluatedItems": {"$ref": "#/components/schemas/JsonValue"},
    "propertyNames": {"pattern": r"^[^\u0000]*$"},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
}
ATTRIBUTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": r"^[^\u0000]*$"},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
    "description": "A JSON object (at most 32 levels deep and 64 KiB as JSON); searches match it by "
    "containment (`@>`).",
}


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer, so the server takes it as 3 (and 3.5 stays an error)."""
    if type(value) is float and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]

Name = Annotated[
    StrictStr | Integer,
    WithJsonSchema({"anyOf": [{"type": "string", **NAME_SCHEMA}, {"type": "integer"}]}),
    Field(
        description="A name: a string (no control characters, 1 to 1000 characters), or an integer stored as its digits."
    ),
]
Number = StrictFloat  # ints too; not booleans or strings
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"  # with an offset
VARIANTS = ("plain", "boost", "adapter", "both")
INTERLEAVED = tuple(f"{a},{b}" for a in VARIANTS for b in VARIANTS if a != b)
ClientId = Annotated[
    StrictStr, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\u0000]+$"})
]
PRICE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        # what rounds to four places below 1e10 (numeric(14, 4)): 9999999999.99994 is 9999999999.9999
        {"type": "number", "minimum": 0, "exclusiveMaximum": 9_999_999_999.99995},
        {"type": "string", "pattern": rf"^{SPACES}[0-9]{{1,10}}(\.[0-9]{{1,4}})?{SPACES}$"},
    ],
    "description": "A price from 0 to 9,999,999,999.9999, as a JSON number or a decimal string.",
}
Price = Annotated[
    Integer | Number | StrictStr,  # an integer stays one: "price_min 9", not 9.0, in messages
    WithJsonSchema({"x-component": "Price"}),
]
PRICE_BOUND_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number"},
        {
            "type": "string",
            "pattern": rf"^{SPACES}[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{{1,6}})?{SPACES}$",
        },
    ],
    "description": "A bound of a price filter, as a JSON number or a decimal string; a bound past the "
    "prices a catalog can store selects as the limit does.",
}
PriceBound = Annotated[Integer | Number | StrictStr, WithJsonSchema({"x-component": "PriceBound"})]
CURRENCY_PATTERN = rf"^{SPACES}[A-Za-z]{{3}}{SPACES}$"
Currency = Annotated[
    StrictStr,
    WithJsonSchema({"type": "string", "pattern": CURRENCY_PATTERN}),
    Field(description="An ISO 4217 code, e.g. EUR (any case)."),
]
Vector = Annotated[
    list[Number], Field(description="One number per dimension of the active model, not all zero.")
]
Attributes = Annotated[dict[str, Any], WithJsonSchema({"x-component": "Attributes"})]
Title = Annotated[
    StrictStr,
    WithJsonSchema({"type": "string", "maxLength": checks.MAX_NAME, "pattern": rf"^[^{CONTROL}]*$"}),
    Field(description="Product text on one line, at most 1000 characters (surrounding spaces dropped)."),
]
Description = Annotated[
    StrictStr,
    WithJsonSchema({"type": "string", "maxLength": checks.MAX_DESCRIPTION, "pattern": r"^[^\u0000]*$"}),
    Field(description="The product's description, at most 100,000 characters."),
]
ImageId = Annotated[Integer, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": checks.MAX_ID})]


def instant(value: dt.datetime) -> str:
    """A timestamp as JSON carries it: UTC, ``Z`` (``2026-11-24T12:00:00.123456Z``), which every
    ISO 8601 reader takes, Java's ``Instant.parse`` included (it refuses ``+00:00`` before Java 12)."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- uploads ----------------------------------------------------------------------------------


PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
URL_SCHEMA: dict[str, Any] = {
    "maxLength": checks.MAX_URL,
    "pattern": rf"^[Hh][Tt][Tt][Pp][Ss]?://[^{SPACE}{CONTROL}/?#@:\[\]]+"
    rf"(:(0*({PORT}))?)?([/?#][^{SPACE}{CONTROL}]*)?$",
}


class UploadItem(Strict):
    """One image by URL, or a bring-your-own embedding (or both), with its product's fields."""

    model_config = ConfigDict(
        extra="forbid",
        # one of them, not null; inside allOf, so that a generated client's type is the fields AND
        # one of these (openapi-typescript makes a bare anyOf beside properties a union of partial
        # objects, where `{url}` without product_id would pass)
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"required": ["url"], "properties": {"url": {"type": "string"}}},
                        {
                            "required": ["embedding"],
                            "properties": {"embedding": {"type": "array", "items": {"type": "number"}}},
                        },
                    ]
                }
            ]
        },
    )

    url: StrictStr | None = Field(
        None,
        description="http(s) URL a worker downloads (public addresses only by default).",
        json_schema_extra=URL_SCHEMA,
    )
    embedding: Vector | None = Field(None, description="Stored as `ready`; no model work.")
    product_id: Name
    category: Name | None = None
    price: Price | None = None
    currency: Currency | None = None
    attributes: Attributes | None = None
    title: Title | None = None
    description: Description | None = None
    brand: Title | None = None
    tenant: Name | None = Field(None, description="Admin keys only: the item's tenant (required then).")


class UploadRequest(Strict):
    items: list[UploadItem] = Field(
        description="All stored, or none: a bad item fails the batch.", json_schema_extra={"minItems": 1}
    )


class UploadResponse(BaseModel):
    ids: list[int] = Field(
        description="Image ids, in the order given. Bytes the shop already stored give that image's id; "
        "for another product, the image is now that product's too (a shared photo)."
    )


class DeleteImagesRequest(Strict):
    ids: list[ImageId] = Field(description="Deleted all, or none when one of them is unknown.")


class DeletedResponse(BaseModel):
    deleted: int


class ImageResponse(BaseModel):
    id: int
    tenant: str
    product_id: str = Field(description="The product that uploaded it first; the fields below are its.")
    product_ids: list[str] = Field(
        description="Every product the image belongs to (a photo shared by several), `product_id` first."
    )
    state: str = Field(description="pending, embedding, ready or failed.")
    error: str | None = Field(description="Why a failed image failed.")
    category: str | None
    price: float | None
    currency: str | None
    attributes: dict[str, Any]
    title: str | None
    description: str | None
    brand: str | None
    attempts: int
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    byte_size: int | None
    uri: str | None
    has_embedding: bool = Field(description="Whether the active model embedded it.")
    phash: str | None = Field(description="Its 64-bit perceptual hash, as 64 '0'/'1'.")
    duplicate_of: int | None = Field(
        description="The image of another product it is a near-copy of (uploaded with `on_duplicate=link`)."
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class DuplicateMember(BaseModel):
    image_id: int
    product_id: str
    hamming: int = Field(description="Hash bits that differ from the group's first image.")
    distance: float | None = Field(description="Embedding cosine distance to the group's first image.")


class DuplicatesResponse(BaseModel):
    groups: list[list[DuplicateMember]] = Field(description="Largest groups first.")
    images: int = Field(description="Images compared.")
    unhashed: int = Field(description="Images without bytes to hash (a URL not fetched yet).")
    unconfirmed: int = Field(description="Hash-close pairs left out: an image not embedded yet.")


# -- products ---------------------------------------------------------------------------------


CHANGES_SOMETHING: JsonDict = {  # inside allOf: a generated client's type stays the fields (UploadItem)
    "allOf": [
        {
            "anyOf": [
                {"required": [name]}
                for name in ("category", "price", "currency", "attributes", "title", "description", "brand")
            ]
        }
    ]
}


class ProductChange(Strict):
    """Fields to set, at least one; a field left out keeps its value, `null` clears it (attributes: `{}`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=CHANGES_SOMETHING)

    category: Name | None = None
    price: Price | None = None
    currency: Currency | None = None
    attributes: Attributes | None = None
    title: Title | None = None
    description: Description | None = None
    brand: Title | None = None
    tenant: Name | None = Field(None, description="Admin keys only: the product's tenant.")


class ProductFeedItem(ProductChange):
    model_config = ConfigDict(extra="forbid", json_schema_extra=CHANGES_SOMETHING)

    product_id: Name


class ProductFeedRequest(Strict):
    items: list[ProductFeedItem] = Field(description="All applied, or none.")


class ProductChangeResponse(BaseModel):
    product_id: str
    changed: bool = Field(description="False when every value was already stored.")


class ProductFeedResponse(BaseModel):
    updated: int = Field(description="Products whose values changed.")
    unchanged: int = Field(description="Products that already had these values.")


class ProductDeleteResponse(BaseModel):
    product_id: str
    deleted_images: int


# -- search -----------------------------------------------------------------------------------


class SearchOptions(Strict):
    """Filters and options, as `catalog.search` takes them."""

    tenant: Name | None = Field(None, description="Admin keys only: one tenant's images.")
    category: Name | Annotated[list[Name], Field(json_schema_extra={"minItems": 1})] | None = Field(
        None, description="One category, or any of a (non-empty) list."
    )
    price_min: PriceBound | None = None
    price_max: PriceBound | None = None
    attributes: Attributes | None = None
    brand: Annotated[StrictStr, WithJsonSchema({"type": "string", **NAME_SCHEMA})] | None = Field(
        None, description="The product's brand, as stored."
    )
    mode: Literal["hybrid", "semantic", "lexical"] | None = Field(
        None,
        description="Text queries: semantic (the model), lexical (the products' words) or hybrid (both, "
        "fused, one hit per product); by default hybrid when the catalog has product text.",
    )
    parse: StrictBool = Field(
        True, description='Text queries: read filters from the words ("red shoes under $50").'
    )
    facets: StrictBool = Field(False, description="Count the match set by category, brand, attribute, price.")
    total: StrictBool | Integer = Field(
        TRACK_TOTAL,
        description="Count the products matching: up to this many, then `total` is that bound and "
        '`total_relation` is "gte" (at least; as Elasticsearch\'s `track_total_hits`); true: the exact '
        "count, however many; false: none (`total` is null).",
        json_schema_extra={"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1, "maximum": MAX_TRACK_TOTAL}]},
    )
    k: Integer = Field(
        10, description="Hits to return, 1 to 1000.", json_schema_extra={"minimum": 1, "maximum": MAX_K}
    )
    offset: Integer = Field(
        0,
        description="Hits to skip first (paging), 0 to 10000.",
        json_schema_extra={"minimum": 0, "maximum": 10 * MAX_K},
    )
    group_by_product: StrictBool = Field(False, description="Best image per product only.")
    diversity: Number | None = Field(
        None,
        description="MMR trade-off from 0 (varied) to 1 (relevant).",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    expand: Integer | None = Field(
        None,
        description="Search again with the query averaged with its top M, 1 to 100.",
        json_schema_extra={"minimum": 1, "maximum": MAX_EXPAND},
    )
    min_score: Number | None = Field(
        None,
        description="Drop hits below this cosine similarity.",
        json_schema_extra={"minimum": -1, "maximum": 1},
    )
    min_probability: Number | None = Field(
        None,
        description="Text queries: drop hits below this.",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    boost: StrictBool = Field(True, description="Blend the tenant's boosts learned from shoppers' feedback.")
    interleave: Literal[INTERLEAVED] | None = Field(  # type: ignore[valid-type]
        None,
        description="Compare two variants (plain, boost, adapter, both) on this search: their hits drafted "
        "in turns, each click credited to its variant (`imgsearch interleave report`).",
    )
    adapter: StrictBool | None = Field(
        None, description="Map the query with the tenant's query adapter (null: for text and image queries)."
    )
    client_id: ClientId | None = Field(
        None, description="Who searched (a session or device id), recorded with the search."
    )
    box: list[Number] | None = Field(
        None,
        description="Image queries: search with this region of the image, [x0, y0, x1, y1] in its pixels "
        "(x0 < x1 and y0 < y1, inside the image).",
        json_schema_extra={"minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0}},
    )
    consistent: StrictBool = Field(
        False,
        description="With replicas: see every write acknowledged before this search (read-your-writes).",
    )
    regions: StrictBool = Field(True, description="Rank an image by the closer of its whole image and its best region.")


QUERIES: dict[str, dict[str, Any]] = {  # each query kind, non-null, and what goes with it alone
    "text": {"type": "string"},
    "vector": {"type": "array"},
    "image_url": {"type": "string"},
    "similar_to": {"type": "integer"},
    "similar_to_product": {"type": ["string", "integer"]},
}


def _exactly_one_query(schema: dict[str, Any]) -> None:
    branches = []
    for name, kind in QUERIES.items():
        others = {other: {"type": "null"} for other in QUERIES if other != name}
        branch: dict[str, Any] = {"required": [name], "properties": {name: kind, **others}}
        if name != "image_url":
            branch["properties"]["box"] = {"type": "null"}  # a region of an image query only
        if name != "text":
            branch["properties"]["min_probability"] = {"type": "null"}  # text queries only
            branch["properties"]["mode"] = {"enum": ["semantic", None]}  # words: text queries only
        branches.append(branch)
    schema["oneOf"] = branches
    # what the words' modes can't take (diversity re-ranks images; lexical has no query vector)
    schema["allOf"] = [
        {
            "if": {"required": ["mode"], "properties": {"mode": {"const": mode}}},
            "then": {"properties": {name: {"type": "null"} for name in names}},
        }
        for mode, names in (("hybrid", ["diversity"]), ("lexical", ["diversity", "expand", "min_score"]))
    ]


class SearchRequest(SearchOptions):
    """Exactly one query: `text`, `vector`, `image_url`, `similar_to` or `similar_to_product`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_query)

    text: StrictStr | None = Field(
        None,
        description="Text to image: 1 to 2000 characters, not only spaces.",
        json_schema_extra={"maxLength": 2000, "pattern": TEXT_PATTERN},
    )
    vector: Vector | None = Field(
        None, description="A query vector of the active model's dimension, not all zero."
    )
    image_url: StrictStr | None = Field(
        None, description="An http(s) image the server downloads.", json_schema_extra=URL_SCHEMA
    )
    similar_to: ImageId | None = Field(None, description="More like this image (itself left out).")
    similar_to_product: Name | None = Field(
        None, description="More like this product (none of its images in the hits)."
    )


# -- feedback events --------------------------------------------------------------------------


class EventItem(Strict):
    query_id: Annotated[StrictStr, WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN})] = (
        Field(description="The search's `query_id`, from its answer.")
    )
    action: Literal["impression", "click", "add_to_cart", "purchase"]
    object_id: Annotated[
        StrictStr | StrictInt,
        WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^[^\u0000]*$"}, {"type": "integer"}]}),
    ] = Field(description="The product id or the image id of the hit at `position`.")
    position: Integer = Field(
        description="The hit's place in the search's ranking: 1 for its first (with `offset`, offset + 1).",
        json_schema_extra={"minimum": 1, "maximum": 999_999_999},
    )
    time: Annotated[StrictStr, WithJsonSchema({"type": "string", "pattern": TIME_PATTERN})] | None = Field(
        None, description="ISO 8601 with a UTC offset; default: when it arrives. Not in the future."
    )
    event_id: ClientId | None = Field(None, description="A repeated `event_id` counts once.")
    client_id: ClientId | None = Field(None, description="Who acted (a session or device id).")


class EventsRequest(Strict):
    events: list[EventItem] = Field(
        description="1 to 10000 events, recorded all or none.",
        json_schema_extra={"minItems": 1, "maxItems": 10_000},
    )
