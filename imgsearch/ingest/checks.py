"""Checks of the values callers hand over, shared by uploads, updates, deletes and searches: names
(tenant, product id, category), prices, currencies, attribute documents and image ids.

Each check raises the error class its caller names, with a message that says what is wrong. A
value that passes can go to PostgreSQL as it is: without these, a NUL byte, a lone surrogate or an
id past ``bigint`` would come back as a driver error from the middle of a statement.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from numbers import Integral, Real
from typing import Any
from urllib.parse import urlsplit

from imgsearch.errors import InvalidInput

MAX_NAME = 1000  # tenant, product id, category: longer is a mistake, not a name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # control characters (NUL included)
# an attribute document's size as JSON, as json.dumps(allow_nan=False) writes it (json.dumps makes
# an encoder per call when given an argument: an import checks a document per row)
_SIZE_ENCODER = json.JSONEncoder(allow_nan=False)
MAX_ATTRIBUTES_BYTES = 64 * 1024
MAX_ATTRIBUTES_DEPTH = 32
MAX_ID = 2**63 - 1  # bigint
MAX_URL = 8192
PRICE_LIMIT = Decimal("1e10")  # prices are numeric(14, 4): every stored one is below it
MAX_DESCRIPTION = 100_000  # characters; a title or a brand is a name (MAX_NAME)
TEXT_FIELDS = ("title", "description", "brand")  # product text (migration 0020)


def name(value: str, what: str, error: type[InvalidInput] = InvalidInput) -> str:
    """``value`` if it can be stored as a name: at most :data:`MAX_NAME` characters, no control
    characters (NUL included: PostgreSQL text can't hold it), valid Unicode."""
    if len(value) > MAX_NAME:
        raise error(f"{what} is {len(value)} characters long; the limit is {MAX_NAME}")
    if _CONTROL.search(value):
        raise error(f"{what} {value[:40]!r} contains control characters")
    unicode(value, what, error)
    return value


def identifier(value: Any, what: str, error: type[InvalidInput] = InvalidInput) -> str:
    """A tenant, product id or category as the catalog stores it: a string or an integer (``42``
    is ``"42"``) without surrounding spaces, not empty, and a :func:`name`. Uploads store names
    this way and lookups (searches, deletes, tenant scopes) read them this way, so the same value
    names the same row everywhere."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise error(f"{what} must be a string, got {type(value).__name__}")
    given = str(value)
    if len(given) > MAX_NAME:  # spaces around it count too: what a client may send is what it may store
        raise error(f"{what} is {len(given)} characters long; the limit is {MAX_NAME}")
    result = given.strip()
    if not result:
        raise error(f"{what} must not be empty")
    return name(result, what, error)


def identifier_field(value: Any, what: str, *, required: bool) -> str | None:
    """A name field of an upload or an update: :func:`identifier`, ``None`` when the field is
    absent and optional, "``what`` is required" when it is absent and required."""
    if value is None:
        if required:
            raise InvalidInput(f"{what} is required")
        return None
    return identifier(value, what)


def product_text(value: Any, what: str, error: type[InvalidInput] = InvalidInput) -> str | None:
    """A product's ``title``, ``brand`` or ``description`` as stored: a string, surrounding spaces
    dropped (empty is None), valid Unicode without NUL; a title or a brand at most
    :data:`MAX_NAME` characters on one line, a description at most :data:`MAX_DESCRIPTION`
    (line breaks and tabs allowed). ``None`` stays ``None``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"{what} must be a string, got {type(value).__name__}")
    result = value.strip()
    if what != "description":
        return name(result, what, error) or None
    if len(result) > MAX_DESCRIPTION:
        raise error(f"{what} is {len(result)} characters long; the limit is {MAX_DESCRIPTION}")
    if "\x00" in result:
        raise error(f"{what} contains a NUL character; PostgreSQL text can't hold it")
    unicode(result, what, error)
    return result or None


def product_row(row: Any, allowed: frozenset[str]) -> tuple[str, str]:
    """The tenant and product id of an upload or update row, after checking that the row is a
    mapping of ``allowed`` keys only; both names are required (:func:`identifier_field`)."""
    if not isinstance(row, Mapping):
        raise InvalidInput(f"a row must be a mapping of fields, got {type(row).__name__}")
    if not row.keys() <= allowed:
        unknown = sorted(str(key) for key in set(row) - allowed)
        raise InvalidInput(f"unknown keys {unknown}; allowed: {sorted(allowed)}")
    tenant = identifier_field(row.get("tenant"), "tenant", required=True)
    product_id = identifier_field(row.get("product_id"), "product_id", required=True)
    assert tenant is not None and product_id is not None
    return tenant, product_id


def price(value: Any) -> Decimal | None:
    """A product price as stored: a finite, non-negative number below :data:`PRICE_LIMIT`, to four
    decimal places (``numeric(14, 4)``); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidInput(f"price must be a number, got {type(value).__name__}")
    try:
        price = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise InvalidInput(f"price must be a number, got {value!r}") from exc
    if not price.is_finite():
        raise InvalidInput(f"price must be finite, got {value!r}")
    if price < 0:
        raise InvalidInput(f"price must not be negative, got {value!r}")
    # as numeric(14, 4) rounds it: 9999999999.99999 is 1e10 (and quantize can't hold 1e300)
    stored = price.quantize(Decimal("0.0001")) if price < PRICE_LIMIT else price
    if stored >= PRICE_LIMIT:
        raise InvalidInput(f"price {value!r} is too large (limit 9,999,999,999.9999)")
    return stored


def currency(value: Any) -> str | None:
    """A three-letter ISO 4217 code, upper case; ``None`` stays ``None``."""
    if value is None:
        return None
    code = value.strip() if isinstance(value, str) else ""
    if len(code) != 3 or not (code.isascii() and code.isalpha()):
        raise InvalidInput(f"currency must be a three-letter ISO 4217 code such as 'EUR', got {value!r}")
    return code.upper()


def attributes(value: Any, what: str, error: type[InvalidInput] = InvalidInput) -> dict[str, Any]:
    """``value`` as a JSON object PostgreSQL's ``jsonb`` accepts: string keys, JSON values nested at
    most :data:`MAX_ATTRIBUTES_DEPTH` deep, finite numbers, no NUL character or lone surrogate in
    any string, at most :data:`MAX_ATTRIBUTES_BYTES` as JSON. Tuples become lists, numpy numbers
    plain ones."""
    if not isinstance(value, Mapping):
        raise error(f"{what} must be a mapping of names to JSON values, got {type(value).__name__}")
    document = _json(value, what, error, depth=1)
    size = len(_SIZE_ENCODER.encode(document))
    if size > MAX_ATTRIBUTES_BYTES:
        raise error(f"{what} are {size} bytes as JSON; the limit is {MAX_ATTRIBUTES_BYTES}")
    assert isinstance(document, dict)
    return document


def url(value: str, what: str = "image URL", error: type[InvalidInput] = InvalidInput) -> str:
    """``value`` if a worker can download it: http(s), a host, a valid port, no spaces or control
    characters (percent-encode them), at most :data:`MAX_URL` characters. Other non-ASCII
    characters are fine: they are percent-encoded when the image is downloaded."""
    if len(value) > MAX_URL:
        raise error(f"{what} is {len(value)} characters long; the limit is {MAX_URL}")
    if any(ch.isspace() or ord(ch) < 32 or ch == "\x7f" for ch in value):
        raise error(f"{what} {value[:80]!r} contains spaces or control characters; percent-encode them")
    unicode(value, what, error)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise error(f"{what} {value[:80]!r} is not a valid URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise error(f"{what} {value[:80]!r} must be http:// or https:// with a host")
    return value


def stored_id(value: Any) -> bool:
    """Whether ``value`` can be a stored id: an integer (not a bool) that fits a positive
    ``bigint``. Anything else names no row."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def _json(value: Any, what: str, error: type[InvalidInput], depth: int) -> Any:
    if depth > MAX_ATTRIBUTES_DEPTH:
        raise error(f"{what} nest deeper than {MAX_ATTRIBUTES_DEPTH} levels")
    kind = type(value)
    if kind is int:  # the plain types first, without the abstract classes' checks below
        return value
    if kind is float and math.isfinite(value):
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise error(f"{what} hold a NUL character in {value[:40]!r}; jsonb can't store it")
        unicode(value, what, error)
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        if not math.isfinite(number):
            raise error(f"{what} must not hold NaN or infinity, got {number}")
        return number
    if isinstance(value, Mapping):
        document = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise error(f"{what}: names must be strings, got {key!r}")
            document[_json(key, what, error, depth)] = _json(item, what, error, depth + 1)
        return document
    if isinstance(value, list | tuple):
        return [_json(item, what, error, depth + 1) for item in value]
    raise error(
        f"{what} must hold JSON values only (mappings, lists, strings, numbers, booleans, None), "
        f"got {type(value).__name__}"
    )


def unicode(value: str, what: str, error: type[InvalidInput] = InvalidInput) -> None:
    """Raise unless ``value`` is valid Unicode: Python strings may hold lone surrogates, which no
    UTF-8 encoder (PostgreSQL's client, a tokenizer) accepts."""
    if value.isascii():  # no surrogate, and a check that costs nothing
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} {value[:40]!r} is not valid Unicode (a lone surrogate)") from exc


def shown(value: Any) -> str:
    """A value as a message shows it: a price as written, anything else as JSON."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return "null" if value is None else json.dumps(value)


Given = dict[tuple[str, str, str], tuple[str, Any]]  # (tenant, product, field): the first row's name, value


def agree(
    given: Given, tenant: str, product_id: str, fields: Mapping[str, Any], index: int, name: str
) -> None:
    """:class:`InvalidInput` naming both rows when the row at ``index`` (called ``name``) gives
    its product a field value other than an earlier row of the batch gave (``given``, filled as
    rows pass)."""
    for field_name, value in fields.items():
        first = given.setdefault((tenant, product_id, field_name), (name, value))
        if first[1] != value:
            raise InvalidInput(
                f"{field_name} of product {product_id!r} of tenant {tenant!r} is "
                f"{shown(value)} here, but {shown(first[1])} in {first[0]}"
            ).at_row(index, name)
