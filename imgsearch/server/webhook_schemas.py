"""Request and response bodies of ``/v1/webhooks`` (:mod:`imgsearch.server.routes.webhooks`)."""

from __future__ import annotations

import datetime as dt

from pydantic import Field, StrictStr

from imgsearch.hooks import EVENT_TYPES
from imgsearch.hooks.endpoints import MAX_URL_LENGTH
from imgsearch.ingest import checks
from imgsearch.server.schemas import NAME_SCHEMA, URL_SCHEMA, Integer, Strict


class WebhookRequest(Strict):
    url: StrictStr = Field(
        description="Where deliveries go: an http(s) URL at a public address.",
        json_schema_extra={**URL_SCHEMA, "maxLength": MAX_URL_LENGTH},
    )
    events: list[StrictStr] | None = Field(
        default=None,
        description="The event types it takes; every type when left out.",
        json_schema_extra={"items": {"enum": list(EVENT_TYPES)}, "minItems": 1},
    )
    tenant: StrictStr | None = Field(default=None, description="With an admin key: the tenant.", json_schema_extra=NAME_SCHEMA)


class WebhookCreated(Strict):
    id: int = Field(description="The endpoint's id.")
    secret: str = Field(description="The signing secret (`whsec_...`), shown this once.")


class WebhookEndpointResponse(Strict):
    id: int
    tenant: str
    url: str
    events: list[str]
    created_at: dt.datetime
    disabled_at: dt.datetime | None = Field(description="When it was disabled, if it was.")
    disabled_reason: str | None = Field(description="Why: how long it had failed, and its last error.")
    pending: int
    delivered: int
    dead: int


class WebhooksResponse(Strict):
    endpoints: list[WebhookEndpointResponse]


class ReplayRequest(Strict):
    since: dt.datetime = Field(description="Resend the events from then ...")
    until: dt.datetime | None = Field(default=None, description="... until then (now when left out).")
    endpoint_id: Integer | None = Field(
        default=None, description="To this endpoint alone.", json_schema_extra={"minimum": 1, "maximum": checks.MAX_ID}
    )
    tenant: StrictStr | None = Field(default=None, description="With an admin key: the tenant.", json_schema_extra=NAME_SCHEMA)


class ReplayResponse(Strict):
    queued: int = Field(description="Deliveries queued, each with its event's own `webhook-id`.")
