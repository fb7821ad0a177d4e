"""Settings, read from ``IMGSEARCH_*`` environment variables.

Read only at entry points (the CLI, a worker's start, :meth:`Catalog.open`) and passed
down as an object: importing imgsearch reads nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, IPvAnyNetwork, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imgsearch.hooks.delivery import Policy
from imgsearch.ingest.downloads import Downloads
from imgsearch.ingest.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

DEFAULT_MODEL = "google/siglip-base-patch16-224"
# a region must be this much (cosine distance) closer than its image's whole row to rank the image:
# single-product photos lose at most 0.02 precision@10 to their own crops at 0.16 with both
# trainings of the small model measured (bench/quality/regions.py; at 0.08 one of them lost 0.04
# on text queries). The library's default and the SQL console's (``imgsearch.region_margin``,
# imgsearch/search/console.py)
REGION_MARGIN = 0.16


def default_home() -> Path:
    """Where the embedded database lives when ``IMGSEARCH_HOME`` is unset.

    As root, the embedded server runs as a separate system user and every parent of its data
    directory is made world-traversable; ``/var/lib`` is the conventional place for that, while
    ``/root/.local/share`` would open up ``/root``.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/imgsearch")
    return Path(platformdirs.user_data_dir("imgsearch", appauthor=False))


class Settings(BaseSettings):
    """imgsearch settings; every field is ``IMGSEARCH_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="IMGSEARCH_", env_nested_delimiter="__", extra="ignore")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of a PostgreSQL with pgvector >= 0.8; unset: embedded."
    )
    home: Path = Field(default_factory=default_home, description="Data directory of the embedded database.")
    model: str = Field(default=DEFAULT_MODEL, description="Hub id or local directory of the embedding model.")
    device: str | None = Field(
        default=None, description="torch device; unset: cuda when available, else cpu."
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (wake-ups only).")
    max_image_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0, description="Largest upload accepted.")
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, description="Decompression-bomb limit.")
    download_allow: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default=[],
        description="Networks workers may download images from besides public addresses, comma-separated "
        "(10.0.0.0/8,fd00::/8; an address alone is one host); unset: public addresses only.",
    )
    webhook_allow: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default=[],
        description="Networks webhook endpoints may be at besides public addresses, comma-separated "
        "(as IMGSEARCH_DOWNLOAD_ALLOW); unset: public addresses only.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Time an endpoint has to answer a delivery."
    )
    webhook_retry_seconds: float = Field(
        default=5.0, gt=0, description="Wait before a failed delivery's first retry; each next one waits 4x longer."
    )
    webhook_give_up_hours: float = Field(
        default=72.0, gt=0, description="Retries stop after this, and an endpoint failing this long is disabled."
    )
    webhook_retention_days: int = Field(default=7, ge=1, description="Events are kept this long for a replay.")
    aspect: Literal["resize", "pad"] = Field(
        default="resize",
        description="resize: the checkpoint's own resize; pad: pad to square on white first.",
    )
    max_aspect_ratio: float = Field(default=20.0, gt=1, description="Wider or taller images are rejected.")
    batch_size: int = Field(default=32, gt=0, description="Images per forward pass.")
    text_cache_size: int = Field(
        default=1024, ge=0, description="Text queries whose embeddings a catalog remembers (0: none)."
    )
    query_batch_size: int = Field(
        default=16,
        gt=0,
        description="Text or image queries asked for at once (a server's requests) embedded in one forward pass.",
    )
    query_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="How long the first query of a batch waits for others to join it, in milliseconds.",
    )
    pool_size: int = Field(
        default=5,
        gt=0,
        le=1000,
        description="Idle connections a catalog's pools keep (each of its two); `imgsearch serve` defaults to 20.",
    )
    replica_urls: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Hot standbys of the database that searches go to, round robin, comma-separated "
        "URLs; uploads, changes, the queue and migrations stay on the primary.",
    )
    replica_max_lag_seconds: float = Field(
        default=30.0, gt=0, description="A replica further behind than this is left out of the rotation."
    )
    replica_wait_ms: int = Field(
        default=1000,
        ge=0,
        le=60_000,
        description="How long a `consistent` search waits for a replica to replay the writes before it, "
        "in milliseconds, before the primary answers it.",
    )
    lock_timeout_ms: int = Field(
        default=0,
        ge=0,
        le=3_600_000,
        description="How long a catalog's statements wait for a lock another session holds (a migration's "
        "`ALTER TABLE`, a long `LOCK`) before they fail, in milliseconds; 0 waits as long as it takes. "
        "`imgsearch serve` defaults to 5000: a request then answers 503 with `Retry-After` instead of "
        "hanging, and doesn't hold a connection and a thread meanwhile.",
    )
    duplicate_max_hamming: int = Field(
        default=10,
        ge=0,
        le=32,
        description="Near-duplicates: at most this many of the 64 bits of two images' perceptual hashes "
        "differ (uploads with `on_duplicate`, `imgsearch duplicates`).",
    )
    duplicate_max_distance: float = Field(
        default=0.1,
        ge=0,
        le=2,
        description="Near-duplicates: and their embeddings lie at most this cosine distance apart.",
    )
    max_batch_items: int = Field(
        default=1000,
        gt=0,
        le=100_000,
        description="The HTTP service's largest batch: items of an upload or a feed, ids of a delete.",
    )
    preload: bool = Field(default=False, description="`imgsearch serve` loads the model when it starts.")
    # up to 1500 rows the exact scan goes first, up to 15% when HNSW comes short (bench/search/search.py)
    exact_max_rows: int = Field(
        default=1500,
        gt=0,
        description="Searches whose filters match at most this many rows scan them exactly, first.",
    )
    exact_max_fraction: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="...or at most this share of the catalog, when HNSW finds too few of them near the query.",
    )
    binary_codes: bool = Field(
        default=True,
        description=(
            "Far filters of a few thousand rows or more compare binary codes first, then re-rank exactly "
            "(where the model's codes passed their recall check)."
        ),
    )
    region_margin: float = Field(
        default=REGION_MARGIN,
        ge=0,
        le=2,
        description="Cosine distance a region's match is handicapped by against its whole image's.",
    )
    cached_plans: bool = Field(
        default=True,
        description="Searches whose best plan doesn't depend on the filter values run on a plan PostgreSQL caches.",
    )
    keep_content: bool = Field(
        default=True,
        description="Keep uploaded images' bytes after embedding. false: workers keep a 256 px "
        "thumbnail instead (a much smaller table and backup), and another model can't embed "
        "those images until their source is uploaded again.",
    )
    queue: str = Field(default="imgsearch", description="Celery queue the workers consume.")
    lease_seconds: int = Field(default=300, gt=0, description="How long a claimed batch is held.")
    sweep_seconds: float = Field(default=60.0, gt=0, description="How often lost work is re-queued.")
    wake_workers: bool = Field(default=False, description="Send a Celery wake-up after each upload.")
    torch_threads: int | None = Field(
        default=None, gt=0, description="CPU threads per worker process (torch's, or ONNX Runtime's)."
    )
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="What runs the model: torch; onnx (an ONNX Runtime export, float32, CPU); onnx-int8 "
        "(its int8 weights, for a model registered as NAME@onnx-int8).",
    )
    runtime_min_cosine: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="An ONNX runtime loads only if its embeddings of a calibration set keep at least this "
        "cosine to torch float32's, for images and texts.",
    )
    retain_freed_memory: bool = Field(
        default=True,
        description="Embedding processes keep freed memory for the next batch (glibc: no mmap, no trim).",
    )
    # shoppers' feedback (imgsearch.learning)
    record_queries: bool = Field(default=True, description="Record every search with its hits, for its events.")
    record_in_background: bool = Field(
        default=True,
        description="Write searches' records from a thread, off the search's path (False: before answering).",
    )
    event_retention_days: int = Field(default=90, ge=1, description="How long searches and events are kept.")
    boost_refresh_seconds: float = Field(default=3600.0, gt=0, description="How often beat recomputes boosts.")
    boost_window_days: int = Field(default=30, ge=1, description="The days of feedback a boost is learned from.")
    boost_min_clicks: int = Field(default=20, ge=0, description="Clicks a boost needs in the window ...")
    boost_min_conversions: int = Field(default=2, ge=0, description="... or add-to-carts and purchases.")
    boost_prior: float = Field(
        default=5.0, gt=0, description="Expected engagements of evidence a boost's ratio is smoothed with."
    )
    boost_conversion_weight: float = Field(default=3.0, ge=0, description="A conversion's weight, a click's 1.")
    boost_full_ratio: float = Field(
        default=4.0, gt=1, description="Engagement over expected that earns the full boost (1)."
    )
    boost_position_prior: float = Field(
        default=100.0, ge=0, description="Impressions of evidence the examination curve counts as, per position."
    )
    boost_max_lift: int = Field(default=10, ge=0, le=100, description="Most places a full boost lifts a hit.")
    boost_product_weight: float = Field(
        default=0.5, ge=0, le=1, description="A product's boost across queries, where a query has none of its own."
    )

    @field_validator("download_allow", "webhook_allow", "replica_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def downloads(self) -> Downloads:
        """The policy workers download images by: the size limit and the allowed networks."""
        return Downloads(max_bytes=self.max_image_bytes, allow=tuple(self.download_allow))

    def webhooks(self) -> Policy:
        """How workers deliver webhooks: where endpoints may be, the time they have, the retries."""
        return Policy(
            network=Downloads(allow=tuple(self.webhook_allow)),  # its time limit: the policy's timeout
            timeout=self.webhook_timeout_seconds,
            retry_seconds=self.webhook_retry_seconds,
            give_up_hours=self.webhook_give_up_hours,
            retention_days=self.webhook_retention_days,
        )


def describe_invalid(exc: ValidationError) -> str:
    """A :class:`Settings` validation error as one line naming each bad variable, e.g.
    ``IMGSEARCH_BATCH_SIZE='0': Input should be greater than 0``, or for a list's
    value ``IMGSEARCH_DOWNLOAD_ALLOW item 2 'intranet': ...``."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors():
        name = prefix + "__".join(str(part) for part in error["loc"] if not isinstance(part, int)).upper()
        items = [part for part in error["loc"] if isinstance(part, int)]  # in a list setting
        where = f" item {items[0] + 1} " if items else "="
        problems.append(f"{name}{where}{error.get('input')!r}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
