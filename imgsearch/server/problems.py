"""Errors as RFC 9457 problem details (``application/problem+json``), never a traceback.

Each library error keeps its message (``detail``) and gets its status: bad input 400 (a request
that doesn't fit the API's schema 422), a missing or bad key 401, an unknown id 404, a body over
the limit 413, a transient fault 503 with ``Retry-After``. Anything else is a bug: 500, logged
with its traceback on the server, and the client sees only the request id to quote.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from imgsearch.errors import (
    ConfigurationError,
    DuplicateImage,
    ImgSearchError,
    InvalidEvents,
    InvalidInput,
    LimitReached,
    NotFound,
    TransientError,
)

log = logging.getLogger("imgsearch.server")

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5

# type URIs are relative to the server: GET /problems/<name> explains each (PROBLEM_TYPES)
PROBLEM_TYPES = {
    "invalid-input": "A value in the request is wrong; `detail` names it and what was expected.",
    "duplicate-image": "An upload with `on_duplicate=reject` is a near-copy of an image of another product "
    "of the tenant (`image_id` and `product_id`; `row` instead of `image_id` when it copies an earlier item "
    "of the same request); nothing was stored. Upload it with `on_duplicate=link` to "
    "keep it linked to that image, or with `keep`.",
    "invalid-events": "Some events of a batch are wrong: `errors` lists each as `index` (from 0) and "
    "`error`; nothing of the batch was recorded.",
    "invalid-request": "The request doesn't fit the API's schema (a missing field, a wrong JSON type); "
    "`errors` lists each problem with its location.",
    "unauthorized": "The request has no API key, or one that is malformed, unknown or revoked. Send "
    "`Authorization: Bearer KEY` with a key from `imgsearch tenant create-key`.",
    "forbidden": "The key can't do this: a tenant's key can't name a tenant, and only admin keys see "
    "every tenant.",
    "not-found": "No such image, product, search or route, or it belongs to another tenant (which "
    "answers exactly like a missing one); /v1/events: `errors` names each event of no search.",
    "too-large": "The request body is over the limit (IMGSEARCH_MAX_IMAGE_BYTES plus 1 MiB), or a "
    "batch has more items than IMGSEARCH_MAX_BATCH_ITEMS.",
    "unavailable": "A transient fault, such as the database being unreachable: retry after "
    "`Retry-After` seconds.",
    "misconfigured": "The server can't do this as configured (e.g. the model can't be loaded); an "
    "operator has to act.",
    "method-not-allowed": "The route exists, with other methods.",
    "internal": "A bug: the server logged it with the request id given here.",
}


class RequestTooLarge(StarletteHTTPException):
    """A request body, or a batch, over the server's limit. An HTTP exception, so that FastAPI
    passes it through when reading a body raises it, instead of calling it a parse error."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class Unauthorized(ImgSearchError):
    """No API key, or a malformed, unknown or revoked one."""


class Forbidden(ImgSearchError):
    """The key may not do what the request asks."""


def problem(
    status: int, kind: str, title: str, detail: str, request: Request | None = None, **extra: Any
) -> JSONResponse:
    """A problem-details response; ``extra`` members are added when not None."""
    body: dict[str, Any] = {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id:
        body["request_id"] = request_id
    body.update({key: value for key, value in extra.items() if value is not None})
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="imgsearch"'
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def for_error(request: Request, exc: Exception) -> JSONResponse:
    """The response for an exception a route raised."""
    if isinstance(exc, Unauthorized):
        return problem(401, "unauthorized", "Unauthorized", str(exc), request)
    if isinstance(exc, Forbidden):
        return problem(403, "forbidden", "Forbidden", str(exc), request)
    if isinstance(exc, StarletteHTTPException):
        return http_errors(request, exc)
    if isinstance(exc, NotFound):
        return problem(404, "not-found", "Not found", str(exc), request, index=exc.index)
    if isinstance(exc, DuplicateImage):
        return problem(
            409,
            "duplicate-image",
            "Duplicate image",
            str(exc),
            request,
            index=exc.index,
            image_id=exc.image_id,
            row=exc.row,
            product_id=exc.product_id,
        )
    if isinstance(exc, InvalidEvents):
        errors = [{"index": index, "error": message} for index, message in exc.problems]
        if exc.unknown:  # only searches the key can't see, or none: as a missing product is
            return problem(404, "not-found", "Not found", str(exc), request, errors=errors)
        return problem(400, "invalid-events", "Invalid events", str(exc), request, errors=errors)
    if isinstance(exc, LimitReached):
        return problem(409, "limit-reached", "Limit reached", str(exc), request)
    if isinstance(exc, InvalidInput):
        return problem(400, "invalid-input", "Invalid input", str(exc), request, index=exc.index)
    if isinstance(exc, TransientError):
        log.warning("transient fault: %s", exc)
        return problem(503, "unavailable", "Service unavailable", str(exc), request)
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.LockNotAvailable):
        # IMGSEARCH_LOCK_TIMEOUT_MS: another session holds a lock this request needs
        log.warning("lock timeout: %s", str(exc.orig).strip().splitlines()[0])
        detail = (
            "the database is busy: another session (a migration?) holds a lock this request needs; "
            "nothing was written"
        )
        return problem(503, "unavailable", "Service unavailable", detail, request)
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        # the database went away mid-request (a restart, a terminated connection): retry
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection lost"
        log.warning("database unavailable: %s", reason)
        return problem(503, "unavailable", "Service unavailable", f"database unavailable: {reason}", request)
    if isinstance(exc, ConfigurationError):
        log.error("misconfigured: %s", exc)
        return problem(503, "misconfigured", "Service misconfigured", str(exc), request)
    log.error("unexpected error", exc_info=exc)
    return problem(
        500, "internal", "Internal server error", "an unexpected error; the server logged it", request
    )


def _location(loc: tuple[Any, ...]) -> str:
    """``("body", "items", 3, "price")`` as ``items[3].price``."""
    text = ""
    if loc == ("body",):
        return "body"
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or str(loc[0] if loc else "request")


# the last part of a location that names a member of a union (``str``, ``int``, ``list[...]``)
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\])$")


_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "an object",
    "none": "null",
}


def _merged(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Each bad location once: pydantic reports a value that fits no member of a union once per
    member (``price.str``, ``price.float``); those become one "a string or a number" message."""
    merged: dict[str, dict[str, Any]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            loc, message = ("body",), f"not valid JSON: {error.get('ctx', {}).get('error', message)}"
        member = loc[-1] if loc and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]) else None
        where = _location(loc[:-1] if member else loc) if len(loc) > 1 or not member else "body"
        entry = merged.setdefault(where, {"location": where, "message": message, "members": []})
        if member:
            entry["members"].append(member.split("[")[0])
    result = []
    for entry in merged.values():
        members = list(dict.fromkeys(entry.pop("members")))
        if len(members) > 1:
            kinds = [_KINDS.get(member, member) for member in members]
            entry["message"] = f"Input should be {', '.join(kinds[:-1])} or {kinds[-1]}"
        result.append(entry)
    return result


def validation_errors(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a request that doesn't fit the schema, naming each bad field's location."""
    errors = _merged(exc.errors())
    index = next(
        (
            part
            for error in exc.errors()
            for position, part in enumerate(error.get("loc", ()))
            if isinstance(part, int) and position > 0 and error["loc"][position - 1] in ("items", "events")
        ),
        None,
    )
    detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
    if len(errors) > 5:
        detail += f"; and {len(errors) - 5} more"
    return problem(422, "invalid-request", "Invalid request", detail, request, errors=errors, index=index)


def allowed_methods(request: Request) -> list[str]:
    """Every method of every route of the request's path (Starlette's ``Allow`` names only those
    of the first route that matched it: GET of ``/v1/images/{id}``, not its DELETE), HEAD with GET."""
    methods: set[str] = set()
    path = request.scope["path"]
    for prefix, route in _routes(request.app.router.routes):
        if not path.startswith(prefix):
            continue
        match, _ = route.matches({**request.scope, "path": path[len(prefix) :], "method": "OPTIONS"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _routes(routes: Sequence[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route with the path prefix it sits under, through included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _routes(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))
        else:
            yield prefix, route


def http_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (an unknown route, a wrong method) as problems too."""
    if exc.status_code == 404:
        return problem(404, "not-found", "Not found", f"no route {request.url.path}", request)
    if exc.status_code == 413:
        return problem(413, "too-large", "Request too large", str(exc.detail), request)
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        response = problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{request.method} is not allowed here; {', '.join(allowed)} are",
            request,
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return problem(exc.status_code, "invalid-request", "Request refused", detail, request)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return for_error(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_errors(request, exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return http_errors(request, exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ImgSearchError, on_error)
    app.add_exception_handler(DBAPIError, on_error)
    app.add_exception_handler(Exception, on_error)
