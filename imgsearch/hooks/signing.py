"""Signatures as the Standard Webhooks specification writes them (what Svix's, Stripe-style and
the specification's own client libraries verify): ``webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`` under a secret given to the shop as ``whsec_<base64>``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from imgsearch.errors import InvalidInput

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise InvalidInput(f"a webhook secret starts with {PREFIX!r}")
    return base64.b64decode(secret[len(PREFIX) :], validate=True)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of one message under ``secret``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a message, signed under each of ``secrets_`` (the current secret, and
    the previous one for a day after a rotation: a receiver holding either verifies it)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets_),
        "content-type": "application/json",
    }
