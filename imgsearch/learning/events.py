"""Feedback events on a search's hits: ``impression``, ``click``, ``add_to_cart``, ``purchase``.

An event names its search (``query_id``, from the search's answer), the object acted on (the
product id or the image id of the hit at ``position``, 1 being the search's first hit), and
optionally its ``time`` (ISO 8601 with a UTC offset; default now), ``event_id`` (a repeated one
counts once) and ``client_id``. A batch is checked whole by ``imgsearch.record_events`` in
PostgreSQL (migration 0022), the same function a SQL console calls: every bad event is named with
its index, and a batch with one is recorded not at all. Under a tenant's scope only that tenant's
searches exist: another tenant's ``query_id`` is refused as an unknown one.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from imgsearch.access import tenancy
from imgsearch.errors import InvalidEvents, InvalidInput
from imgsearch.learning import queries

ACTIONS = ("impression", "click", "add_to_cart", "purchase")
UNKNOWN_SEARCH = "no search has query_id"  # how the database names an event of no (visible) search
MAX_EVENTS = 10_000  # per batch (migration 0022's record_events says the same)


@dataclass(frozen=True)
class Recorded:
    """What a batch recorded: ``recorded`` events, and ``duplicates`` left out (an ``event_id``
    seen before, or twice in the batch)."""

    recorded: int
    duplicates: int


def _plain(value: Any, name: str) -> Any:
    """An event's field as JSON takes it: a UUID as its text, an aware datetime in ISO 8601."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput(f"{name} must be a datetime with a time zone, got a naive {value.isoformat()}")
        return value.isoformat()
    return value


def as_json(events: Iterable[Mapping[str, Any]]) -> tuple[list[Any], dict[int, str]]:
    """The events as JSON values, and the problems found on this side (a value JSON can't carry)
    by index; an event with one is sent as ``{}`` (refused by the database too, the message here
    kept)."""
    if isinstance(events, str | bytes | Mapping) or not isinstance(events, Iterable):
        raise InvalidInput(f"events must be a list of events, got {type(events).__name__}")
    plain: list[Any] = []
    problems: dict[int, str] = {}
    for index, event in enumerate(events):
        if len(plain) >= MAX_EVENTS:
            raise InvalidInput(f"a batch has at most {MAX_EVENTS} events")
        if not isinstance(event, Mapping):
            plain.append(None)  # the database names it: not a JSON object
            continue
        try:
            converted = {str(key): _plain(value, str(key)) for key, value in event.items()}
            _storable(converted)
            json.dumps(converted, allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems[index] = str(exc) if isinstance(exc, InvalidInput) else f"not JSON: {exc}"
            converted = {}
        plain.append(converted)
    if not plain:
        raise InvalidInput("events must not be empty")
    return plain, problems


def _storable(value: Any) -> None:
    """Refuse what PostgreSQL's JSON can't hold: NUL characters, unpaired surrogates."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput("text must not contain a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput("text must be valid Unicode (an unpaired surrogate)") from exc
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _storable(item)


def record(
    engine: Engine,
    tenant: str | None,
    events: Iterable[Mapping[str, Any]],
    before: Callable[[], Any] | None = None,
) -> Recorded:
    """Check and record one batch, all or nothing (:class:`InvalidEvents` names each bad event).
    ``before``: called first (a catalog's :meth:`Recorder.flush`: its searches' rows written).

    A search's row is written after it answered (:mod:`imgsearch.learning.queries`): a batch
    refused only for searches too recent to be written yet, by their ``query_id``'s time, is
    checked again once they are (at most :data:`queries.MAX_DELAY` after the search)."""
    plain, problems = as_json(events)
    if before is not None:
        before()
    for waited in (False, True):
        try:
            found = _checked(engine, tenant, plain)
            break
        except DBAPIError as exc:
            refused = _refused(exc)
            if refused is None:
                raise
            wait = None if waited else _wait_for_searches(plain, refused)
            if wait is None:
                raise _invalid({**dict(refused), **problems}, len(plain)) from None
            time.sleep(wait)
    if problems:  # the database found nothing wrong with the rest: still none recorded
        raise _invalid(problems, len(plain))
    return Recorded(int(found["recorded"]), int(found["duplicates"]))


def _checked(engine: Engine, tenant: str | None, plain: list[Any]) -> Any:
    with tenancy.begin(engine, tenant) as conn:
        return conn.execute(
            text("SELECT imgsearch.record_events(CAST(:events AS jsonb))"), {"events": json.dumps(plain)}
        ).scalar_one()


def _wait_for_searches(plain: list[Any], refused: list[tuple[int, str]]) -> float | None:
    """Seconds until the searches of a batch refused only for unknown searches, all of them
    recent, have their rows written; None when a refusal is of another kind or older."""
    latest = 0.0
    for index, message in refused:
        event = plain[index] if 0 <= index < len(plain) else None
        if not message.startswith(UNKNOWN_SEARCH) or not isinstance(event, dict):
            return None
        try:
            searched = uuid.UUID(str(event.get("query_id"))).int >> 80  # a UUIDv7's milliseconds
        except ValueError:
            return None
        latest = max(latest, searched / 1000 + queries.MAX_DELAY)
    wait = latest - time.time()
    return wait if 0 < wait <= queries.MAX_DELAY else None


def _refused(exc: DBAPIError) -> list[tuple[int, str]] | None:
    """The bad events of a batch the database refused, or None for another error."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) != "22023":
        return None
    diag = getattr(orig, "diag", None)
    detail = getattr(diag, "message_detail", None)
    if detail:
        try:
            return [(int(p["index"]), str(p["error"])) for p in json.loads(detail)]
        except (ValueError, KeyError, TypeError):
            pass
    message = getattr(diag, "message_primary", None) or str(orig).strip().splitlines()[0]
    raise InvalidInput(message) from None  # the batch itself (not an array, too many events)


def _invalid(problems: Mapping[int, str], count: int) -> InvalidEvents:
    found = sorted(problems.items())
    shown = "; ".join(f"event {index}: {message}" for index, message in found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    unknown = all(message.startswith(UNKNOWN_SEARCH) for _, message in found)
    return InvalidEvents(f"{len(found)} of {count} events refused, nothing recorded: {shown}{more}", found, unknown)
