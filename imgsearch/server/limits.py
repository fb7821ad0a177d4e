"""The server's limits on what one request may carry."""

from __future__ import annotations

from dataclasses import dataclass

from imgsearch.settings import Settings

ENVELOPE_BYTES = 1024 * 1024  # multipart boundaries, form fields and JSON around the largest image


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_items: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_image_bytes + ENVELOPE_BYTES, settings.max_batch_items)
