"""What every request goes through: a request id, the body limit, a structured log line, metrics,
and a problem response for anything a route let escape.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: a search is a few milliseconds, and
the extra task and stream copies of the latter would be a fair share of that.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch.server.metrics import Metrics
from imgsearch.server.problems import RequestTooLarge, for_error

access_log = logging.getLogger("imgsearch.server.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned


class RequestContext:
    """ASGI middleware: request ids, body limits, access logs and metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":  # every GET route answers HEAD: its headers, no body
            await self._head(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(f"the request body is over the {limit}-byte limit")
            return message

        try:
            length = _content_length(headers)
            if length is not None and length > limit:
                raise RequestTooLarge(f"the request body is {length} bytes, over the {limit}-byte limit")
            await self.app(scope, limited_receive, send_with_id)
        except ClientDisconnect:
            # the client went away while its body was being read: nothing to answer, nothing wrong
            # here (nginx's 499 in the access log and metrics, no traceback)
            status = CLIENT_CLOSED_REQUEST
            access_log.info(
                "client disconnected before its request was read",
                extra={"fields": {"request_id": request_id}},
            )
        except Exception as exc:  # whatever a route let escape: a problem, never a traceback
            if response_started:
                access_log.error("error after the response started", exc_info=exc)
            else:
                await for_error(Request(scope), exc)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], template, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                state = scope.get("state", {})
                principal = state.get("principal")
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                }
                if principal is not None:
                    record["key_id"] = principal.key_id
                    record["tenant"] = principal.tenant
                access_log.info("request", extra={"fields": record})

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self(dict(scope, method="GET"), receive, headers_only)


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for imgsearch's and uvicorn's loggers (uvicorn's access log is off:
    the access logger here writes one line per request, with its request id)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("imgsearch", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(level)
