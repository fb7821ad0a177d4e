"""Schemathesis hooks for tests/server/test_schema.py: the rules JSON Schema can't state, and
the OpenAPI schema's descriptions give instead.

- a file part is an image (`FUZZ_IMAGE`, a real PNG), not any bytes;
- a query `image_url` is one the test serves (`FUZZ_IMAGE_URL`), not a made-up host;
- a box lies inside that image, with x0 < x1 and y0 < y1;
- `price_min` is not above `price_max`;
- one batch doesn't give one product two different values of a field;
- an image query's `params` name no mode but `semantic`;
- a `wait` for an image is at most 0.2 s (a pending image would hold the request for the whole wait).

JSON bodies are mapped (Schemathesis validates a changed body again, so a request stays labelled
valid or invalid by what is sent). Multipart bodies carry bytes, which its validator can't read,
so those are filtered instead: a form that breaks a rule here is not sent. Case hooks, not body
hooks: the coverage phase applies only these.

Loaded by `st run` through ``SCHEMATHESIS_HOOKS=tests.server.fuzz_hooks``."""

from __future__ import annotations

import datetime as dt
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image

from imgsearch.errors import InvalidInput
from imgsearch.hooks.endpoints import check_url
from imgsearch.ingest.downloads import Downloads
from imgsearch.server.schemas import URL_SCHEMA

IMAGE = Path(os.environ["FUZZ_IMAGE"]).read_bytes()
IMAGE_URL = os.environ["FUZZ_IMAGE_URL"]
WIDTH, HEIGHT = Image.open(Path(os.environ["FUZZ_IMAGE"])).size
URL = re.compile(URL_SCHEMA["pattern"])

schemathesis.openapi.format("binary", st.just(IMAGE))


def _path(context: Any) -> str:
    return str(context.operation.path) if context.operation is not None else ""


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value).strip()) if isinstance(value, int | float | str) else None
    except InvalidOperation:
        return None


def _box_inside(box: Any) -> bool:
    values = [_number(v) for v in box] if isinstance(box, list) and len(box) == 4 else []
    if len(values) != 4 or any(v is None or not v.is_finite() for v in values):
        return False
    x0, y0, x1, y1 = values
    return 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT  # type: ignore[operator]


def _prices_in_order(body: dict[str, Any]) -> bool:
    low, high = _number(body.get("price_min")), _number(body.get("price_max"))
    return low is None or high is None or not (low.is_finite() and high.is_finite()) or low <= high


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    wait = _number((case.query or {}).get("wait")) if isinstance(case.query, dict) else None
    if wait is not None and wait.is_finite() and 0.2 < wait <= 60:  # valid stays valid, and short
        case.query = {**case.query, "wait": 0.2}
    body = case.body
    if not isinstance(body, dict) or case.media_type != "application/json":
        return case
    body = dict(body)
    if _path(context) == "/v1/search":
        # each change turns a valid value into another valid one, and leaves an invalid one be
        url = body.get("image_url")
        if isinstance(url, str) and URL.search(url) and len(url) <= URL_SCHEMA["maxLength"]:
            body["image_url"] = IMAGE_URL
        box = body.get("box")
        numbers = isinstance(box, list) and all(type(v) in (int, float) and v >= 0 for v in box)
        if numbers and len(box) == 4 and not _box_inside(box):
            body["box"] = [0, 0, WIDTH, HEIGHT]
        if not _prices_in_order(body):
            body["price_min"], body["price_max"] = body["price_max"], body["price_min"]
    case.body = body
    return case


def _invalid_body(case: Any) -> bool:
    meta = case.meta
    if meta is None:
        return False
    return any(place.value == "body" and info.mode.is_negative for place, info in meta.components.items())


def _agreeing(items: list[Any]) -> bool:
    """No two rows give one product different values of a field."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("product_id"), str | int):
            key = (str(item.get("tenant")), str(item["product_id"]))
            fields = {k: v for k, v in item.items() if k not in ("product_id", "tenant", "url", "embedding")}
            earlier = seen.setdefault(key, {})
            if any(k in earlier and earlier[k] != v for k, v in fields.items()):
                return False
            earlier.update(fields)
    return True


def _public_endpoint(url: Any) -> bool:
    """Whether an endpoint may be at ``url``: a public address (a rule of addresses, not of shapes)."""
    try:
        check_url(url, Downloads())
    except InvalidInput:
        return False
    return True


def _in_order(since: Any, until: Any) -> bool:
    """Whether a replay's range runs forward (``until``: now when left out)."""
    try:
        start = dt.datetime.fromisoformat(str(since))
        end = dt.datetime.now(dt.UTC) if until is None else dt.datetime.fromisoformat(str(until))
        start, end = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (start, end))
    except ValueError:
        return True  # not a date: the schema's own check
    return start < end


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("items"), list) and not _agreeing(body["items"]):
        return False
    if isinstance(body, dict) and case.media_type == "multipart/form-data" and _invalid_body(case):
        # Schemathesis can't check that a form it made invalid is invalid (its validator can't
        # read the file's bytes), and sending it erases some of its changes (a None drops the
        # part, True becomes "True", a list of one is one part): such forms are as often valid
        # as not. test_images.py and test_search.py send invalid forms with what they expect.
        return False
    if _path(context) == "/v1/images" and str(case.method).upper() == "POST" and isinstance(body, dict):
        # on_duplicate=link or reject compares bytes: a URL item (fetched later) is a 400 with them
        urls = any(isinstance(item, dict) and "url" in item for item in body.get("items") or [])
        return not (urls and (case.query or {}).get("on_duplicate") in ("link", "reject"))
    if _path(context) == "/v1/webhooks" and isinstance(body, dict):
        return _public_endpoint(body.get("url"))
    if _path(context) == "/v1/webhooks:replay" and isinstance(body, dict):
        return _in_order(body.get("since"), body.get("until"))
    if _path(context) not in ("/v1/search/image", "/v1/search/look") or not isinstance(body, dict):
        return True
    params = body.get("params")
    given = dict(params) if isinstance(params, dict) else {}
    given.update({k: v for k, v in body.items() if not (isinstance(v, str) and not v.strip())})
    box = given.get("box")
    if isinstance(box, str):
        box = box.split(",")
    if box is not None and not _box_inside(box):
        return False
    if given.get("mode") not in (None, "semantic"):  # an image query is semantic (the form says so)
        return False
    return _prices_in_order(given)
