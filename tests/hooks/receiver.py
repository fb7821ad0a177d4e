"""A webhook receiver as a shop would run one: a real HTTP server that verifies each delivery
with a Standard Webhooks verifier written here from the specification
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md), not
with imgsearch's signing code, and de-duplicates by ``webhook-id``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 5 * 60  # the specification's suggested tolerance for the timestamp


class Unverified(Exception):
    pass


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> None:
    """Raise :class:`Unverified` unless the headers sign ``body`` under ``secret``."""
    msg_id, stamp, signatures = (headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        raise Unverified("missing headers")
    if abs((now or time.time()) - int(stamp)) > TOLERANCE_SECONDS:
        raise Unverified("timestamp out of tolerance")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise Unverified("no signature matches")


@dataclass
class Receiver:
    """What arrived: every verified request (``raw``), and the messages by ``webhook-id``."""

    secrets: list[str] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    answer_bytes: int = 0
    redirect_to: str | None = None
    raw: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def messages(self) -> dict[str, dict[str, Any]]:
        """The verified messages, each once (de-duplicated by id, as a receiver does)."""
        with self.lock:
            return {m["id"]: m for m in self.raw}

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The de-duplicated messages in order of first arrival (of ``kind`` alone, with one)."""
        seen: dict[str, dict[str, Any]] = {}
        with self.lock:
            for m in self.raw:
                seen.setdefault(m["id"], m)
        return [m for m in seen.values() if kind is None or m["body"]["type"] == kind]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if receiver.delay:
                time.sleep(receiver.delay)
            if receiver.redirect_to:
                self.send_response(302)
                self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if receiver.status < 300:
                for secret in receiver.secrets:
                    try:
                        verify(secret, self.headers, body)
                        break
                    except Unverified:
                        continue
                else:
                    with receiver.lock:
                        receiver.rejected.append(self.headers.get("webhook-id", "?"))
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.raw.append(
                        {"id": self.headers["webhook-id"], "body": json.loads(body), "at": time.time(),
                         "headers": {k.lower(): v for k, v in self.headers.items()}}
                    )  # fmt: skip
            self.send_response(receiver.status)
            size = receiver.answer_bytes
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while size > 0:
                    self.wfile.write(chunk[: min(size, len(chunk))])
                    size -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 would drop the SYNs of a worker's 8 posts at once
    allow_reuse_address = True  # to come back on the same port at once


@contextmanager
def serving(receiver: Receiver, port: int = 0) -> Iterator[Receiver]:
    """Serve ``receiver`` on 127.0.0.1 (``port``: a given one, to come back on after a stop)."""
    server = Server(("127.0.0.1", port), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
