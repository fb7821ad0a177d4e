"""The checks of values callers hand over (imgsearch/ingest/checks.py): attribute documents, as
every upload, import, update and filter checks them."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgsearch.errors import InvalidInput
from imgsearch.ingest import checks

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
documents = st.dictionaries(
    st.text(),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


def storable(value: Any) -> bool:
    """Whether jsonb can hold ``value`` as it is: finite numbers, strings without NUL or a lone
    surrogate (keys too)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, list):
        return all(storable(item) for item in value)
    if isinstance(value, dict):
        return all(storable(key) and storable(item) for key, item in value.items())
    return True


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@given(documents)
def test_a_document_jsonb_can_hold_comes_back_as_it_is_and_any_other_is_refused(document: dict[str, Any]) -> None:
    if storable(document) and len(json.dumps(document)) <= checks.MAX_ATTRIBUTES_BYTES:
        assert same(checks.attributes(document, "attributes"), document)
    else:
        with pytest.raises(InvalidInput, match="attributes"):
            checks.attributes(document, "attributes")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"n": np.int64(3), "x": np.float32(0.5), "t": (1, "a")}, {"n": 3, "x": 0.5, "t": [1, "a"]}),
        ({"d": Decimal("1.5"), "b": np.bool_(True)}, None),  # neither is a JSON value
        ({"deep": json.loads("[" * 40 + "]" * 40)}, None),
        ({"big": "x" * checks.MAX_ATTRIBUTES_BYTES}, None),
        ({"nan": float("nan")}, None),
        ({"inf": np.float64("inf")}, None),
        ({1: "key not a string"}, None),
    ],
)
def test_documents_of_other_types(value: dict[Any, Any], expected: dict[str, Any] | None) -> None:
    """Numpy numbers and tuples become plain JSON values; anything JSON can't say is refused."""
    if expected is None:
        with pytest.raises(InvalidInput, match="attributes"):
            checks.attributes(value, "attributes")
    else:
        assert same(checks.attributes(value, "attributes"), expected)
