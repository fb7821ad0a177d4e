"""The answers of ``/v1/search``, ``/v1/categories``, ``/v1/status`` and ``/v1/events`` (part of the
API's schema, :mod:`imgsearch.server.schemas`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HitResponse(BaseModel):
    image_id: int
    product_id: str
    tenant: str
    category: str | None
    price: float | None
    currency: str | None
    title: str | None
    brand: str | None
    distance: float | None = Field(
        description="Cosine distance, 0 (same direction) to 2; null in lexical mode."
    )
    score: float | None = Field(description="Cosine similarity, 1 - distance; null in lexical mode.")
    probability: float | None = Field(
        None, description="Text queries on SigLIP: the calibrated match probability (absent otherwise)."
    )
    matched_by: dict[str, int] = Field(
        description='Which side found it and at what rank: {"semantic": 3, "lexical": 1}.'
    )
    relevance: float | None = Field(
        None, description="Lexical and hybrid: the fused score (Reciprocal Rank Fusion), highest first."
    )
    boost: float | None = Field(
        None,
        description="The learned boost blended into its place, 0 to 1 (absent: the search blended none).",
    )
    region: list[int] | None = Field(
        None,
        description="The region of the image that matched, [x0, y0, x1, y1] in its pixels; null: the whole image.",
        json_schema_extra={"minItems": 4, "maxItems": 4},
    )


class LookObjectResponse(BaseModel):
    box: list[int] = Field(
        description="The object's box in the query photo, [x0, y0, x1, y1] in its pixels.",
        json_schema_extra={"minItems": 4, "maxItems": 4},
    )
    label: str | None = Field(description="The detector's label; null for a grid's cell.")
    score: float | None = Field(description="The detector's score, 0 to 1; null for a grid's cell.")
    hits: list[HitResponse] = Field(description="The hits of the object's crop, best first.")


class LookResponse(BaseModel):
    objects: list[LookObjectResponse] = Field(description="The photo's objects, the detector's best first.")


class PriceBucketResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    low: float = Field(alias="from")
    high: float = Field(alias="to")
    count: int


class FacetsResponse(BaseModel):
    category: dict[str, int] = Field(description="Products per category, most first.")
    brand: dict[str, int]
    attributes: dict[str, dict[str, int]] = Field(description="Per attribute key, its top values.")
    price: list[PriceBucketResponse] = Field(description="Buckets of a round width; `to` is exclusive.")


class UnderstoodResponse(BaseModel):
    text: str = Field(description="What is left of the query after the filters read from it.")
    category: str | None = None
    brand: str | None = None
    attributes: dict[str, str] | None = None
    price_min: float | None = None
    price_max: float | None = None
    corrected: dict[str, str] | None = Field(
        None,
        description="Near spellings read as the shop's words: as typed -> the value read "
        '({"Zephyrene": "Zephyrine"}); absent when every word was read as written.',
    )
    fallback: bool = Field(description="The filters read matched nothing: the query ran as typed.")


class SearchResponse(BaseModel):
    query_id: str = Field(description="The search's id (a UUID), for the events on its hits (/v1/events).")
    hits: list[HitResponse] = Field(description="Best first.")
    total: int | None = Field(description="Products matching (the whole match set, not the page).")
    total_relation: Literal["eq", "gte"] | None = Field(
        description='"eq": `total` is exact; "gte": the count stopped at the request\'s bound, at least '
        "`total` products match; null without a total."
    )
    mode: str = Field(description="How the query was searched: semantic, lexical or hybrid.")
    notice: str | None = Field(
        None, description="What the search did otherwise than asked, e.g. a text matched lexically because the "
        "model embeds no text; absent otherwise.",
    )
    facets: FacetsResponse | None = Field(None, description="With `facets`: counts of the whole match set.")
    understood: UnderstoodResponse | None = Field(
        None, description="Text queries with `parse`: the filters read from the words, to show and remove."
    )


class CategoryResponse(BaseModel):
    name: str
    products: int


class CategoriesResponse(BaseModel):
    categories: list[CategoryResponse] = Field(description="Most products first.")


class FailedImage(BaseModel):
    image_id: int
    tenant: str
    product_id: str | None = Field(description="The product that uploaded it.")
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


class EventsResponse(BaseModel):
    recorded: int
    duplicates: int = Field(description="Events left out: an `event_id` seen before, or twice in the batch.")
