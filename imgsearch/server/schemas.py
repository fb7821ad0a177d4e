"""Request and response bodies of the HTTP API (its OpenAPI schema).

The models check shapes and JSON types only; values (names, prices, vectors, attributes) are
checked by the library, as for every other caller, so the same mistakes get the same messages.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Name = Annotated[
    StrictStr | StrictInt, Field(description="A name: a string, or an integer stored as its digits.")
]
Number = StrictFloat  # ints too; not booleans or strings
Price = Annotated[
    StrictInt | Number | StrictStr,  # an integer stays one: "price_min 9", not 9.0, in messages
    Field(description="A non-negative price, as a JSON number or a decimal string."),
]
Vector = Annotated[list[Number], Field(description="One number per dimension of the active model.")]
Attributes = Annotated[
    dict[str, Any], Field(description="A JSON object; searches match it by containment (`@>`).")
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- uploads ----------------------------------------------------------------------------------


class UploadItem(Strict):
    """One image by URL, or a bring-your-own embedding, with its product's fields."""

    url: StrictStr | None = Field(
        None, description="http(s) URL a worker downloads (public addresses only by default)."
    )
    embedding: Vector | None = Field(None, description="Stored as `ready`; no model work.")
    product_id: Name
    category: Name | None = None
    price: Price | None = None
    currency: StrictStr | None = Field(None, description="ISO 4217 code, e.g. EUR.")
    attributes: Attributes | None = None
    tenant: Name | None = Field(None, description="Admin keys only: the item's tenant (required then).")


class UploadRequest(Strict):
    items: list[UploadItem] = Field(description="All stored, or none: a bad item fails the batch.")


class UploadResponse(BaseModel):
    ids: list[int] = Field(description="Image ids, in the order given; a duplicate's existing id.")


class DeleteImagesRequest(Strict):
    ids: list[StrictInt] = Field(description="Deleted all, or none when one of them is unknown.")


class DeletedResponse(BaseModel):
    deleted: int


class ImageResponse(BaseModel):
    id: int
    tenant: str
    product_id: str
    state: str = Field(description="pending, embedding, ready or failed.")
    error: str | None = Field(description="Why a failed image failed.")
    category: str | None
    price: float | None
    currency: str | None
    attributes: dict[str, Any]
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


class ProductChange(Strict):
    """Fields to set; a field left out keeps its value, `null` clears it (attributes: `{}`)."""

    category: Name | None = None
    price: Price | None = None
    currency: StrictStr | None = None
    attributes: Attributes | None = None
    tenant: Name | None = Field(None, description="Admin keys only: the product's tenant.")


class ProductFeedItem(ProductChange):
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
    category: Name | list[Name] | None = Field(None, description="One category, or any of a list.")
    price_min: Price | None = None
    price_max: Price | None = None
    attributes: Attributes | None = None
    k: StrictInt = Field(10, description="Hits to return, 1 to 1000.")
    offset: StrictInt = Field(0, description="Hits to skip first (paging), 0 to 10000.")
    group_by_product: StrictBool = Field(False, description="Best image per product only.")
    diversity: Number | None = Field(None, description="MMR trade-off from 0 (varied) to 1 (relevant).")
    expand: StrictInt | None = Field(None, description="Search again with the query averaged with its top M.")
    min_score: Number | None = Field(None, description="Drop hits below this cosine similarity.")
    min_probability: Number | None = Field(None, description="Text queries: drop hits below this.")
    box: list[Number] | None = Field(
        None,
        description="Image queries: search with this region of the image, [x0, y0, x1, y1] in its pixels.",
    )
    consistent: StrictBool = Field(
        False,
        description="With replicas: see every write acknowledged before this search (read-your-writes).",
    )


class SearchRequest(SearchOptions):
    """Exactly one query: `text`, `vector`, `image_url`, `similar_to` or `similar_to_product`."""

    text: StrictStr | None = Field(None, description="Text to image.")
    vector: Vector | None = Field(None, description="A query vector of the active model's dimension.")
    image_url: StrictStr | None = Field(None, description="An http(s) image the server downloads.")
    similar_to: StrictInt | None = Field(None, description="More like this image (itself left out).")
    similar_to_product: Name | None = Field(
        None, description="More like this product (none of its images in the hits)."
    )


class HitResponse(BaseModel):
    image_id: int
    product_id: str
    tenant: str
    category: str | None
    price: float | None
    distance: float = Field(description="Cosine distance, 0 (same direction) to 2.")
    score: float = Field(description="Cosine similarity, 1 - distance.")
    probability: float | None = Field(
        None, description="Text queries on SigLIP: the calibrated match probability (absent otherwise)."
    )


class SearchResponse(BaseModel):
    hits: list[HitResponse] = Field(description="Nearest first.")


class CategoryResponse(BaseModel):
    name: str
    products: int


class CategoriesResponse(BaseModel):
    categories: list[CategoryResponse] = Field(description="Most products first.")


# -- status -----------------------------------------------------------------------------------


class FailedImage(BaseModel):
    image_id: int
    tenant: str
    error: str


class StatusResponse(BaseModel):
    model: str = Field(description="The active model.")
    dim: int
    counts: dict[str, int] = Field(description="Images per state.")
    oldest_pending_seconds: float | None
    failed: list[FailedImage] = Field(description="The latest failures, newest first.")
    queue_depth: int | None = Field(
        None, description="Admin keys only: wake-up messages waiting (null: broker unreachable)."
    )
