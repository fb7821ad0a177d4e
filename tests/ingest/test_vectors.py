"""Vectors at unit length, whatever their scale (imgsearch/ingest/vectors.py): huge finite values
don't overflow to zeros, tiny ones don't underflow, and what has no direction is refused by name;
through the library, every stored row and query stays searchable (issue 42, item 2)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from imgsearch import Catalog, DimensionMismatch, InvalidInput
from imgsearch.ingest.vectors import as_vector, as_vectors
from tests.helpers import unit

DIM = 768


@pytest.mark.parametrize(
    "scale",
    [1e300, sys.float_info.max, 3e38, 1.0, 1e-30, 1e-300, 5e-324],
    ids=["1e300", "float max", "float32 max", "1", "1e-30", "1e-300", "smallest subnormal"],
)
def test_any_finite_scale_gives_the_same_unit_vector(scale: float) -> None:
    direction = unit(DIM, 3).astype(np.float64)
    if scale == 5e-324:  # only a multiple of the smallest subnormal is representable
        direction = np.where(direction > 0, 1.0, -1.0)
    value = direction / np.abs(direction).max() * scale
    got = as_vector(value.tolist(), DIM)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert math.isclose(float(np.linalg.norm(got)), 1.0, rel_tol=1e-6)
    assert np.allclose(got, direction / np.linalg.norm(direction), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_one_pass_norm_gives_what_the_scaled_one_gives(dtype: type) -> None:
    """A sum of squares in its safe range takes one division (as_vector's fast way); the scaled
    way (every other vector, and as_vectors) gives the same unit vector."""
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(DIM) * scale for scale in (1e-90, 1e-3, 1.0, 1e3, 1e90)]
    values.append(np.array([1.0, 1e-170] * (DIM // 2)))  # a square under float64's range, beside others
    for value in values:
        if dtype is np.float32 and np.abs(value).min() > 1e-30 and np.abs(value).max() < 1e30:
            value = value.astype(np.float32)  # as an embedder's output comes
        scaled = as_vectors([value], DIM)
        assert scaled is not None
        assert np.allclose(as_vector(value, DIM), scaled[0], rtol=0, atol=2e-7)


def test_every_value_the_same_huge_number() -> None:
    got = as_vector([1e300] * DIM, DIM)
    assert np.allclose(got, 1 / math.sqrt(DIM))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([0.0] * DIM, InvalidInput, "all zeros"),
        ([-0.0] * DIM, InvalidInput, "all zeros"),
        ([math.nan] + [1.0] * (DIM - 1), InvalidInput, "nan at index 0"),
        ([1.0] * (DIM - 1) + [math.inf], InvalidInput, "inf at index 767"),
        ([1.0] * (DIM - 1) + [-math.inf], InvalidInput, "-inf at index 767"),
        ([1.0, 2.0], DimensionMismatch, "2 dimensions, expected 768"),
        ([], DimensionMismatch, "0 dimensions"),
        ("0.5, 0.5", InvalidInput, "got str"),
        ([[1.0] * DIM], InvalidInput, "one-dimensional"),
        (["a"] * DIM, InvalidInput, "sequence of 768 numbers"),
        ([10**400] * DIM, InvalidInput, "sequence of 768 numbers"),  # an int past float's range
    ],
    ids=[
        "zeros",
        "negative zeros",
        "nan",
        "inf",
        "-inf",
        "short",
        "empty",
        "text",
        "nested",
        "words",
        "huge int",
    ],
)
def test_what_has_no_direction_is_refused_by_name(value: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        as_vector(value, DIM, "embedding")


def test_without_a_dimension_any_length_but_none() -> None:
    assert as_vector([0.0, 2.0, 0.0], None).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(InvalidInput, match="embedding is empty"):
        as_vector([], None)


def test_many_at_once_as_each_alone() -> None:
    rows = [[1e300] * DIM, [1e-300] * DIM, unit(DIM, 1).tolist()]
    matrix = as_vectors(rows, DIM)
    assert matrix is not None
    for row, got in zip(rows, matrix, strict=True):
        assert np.array_equal(got, as_vector(row, DIM))
    assert as_vectors([*rows, [0.0] * DIM], DIM) is None  # a bad row: checked one at a time, by name
    # to the bit (an imported vector's content hash is that of the same vector added alone), at
    # every scale, rows of the fast way beside rows of the scaled one
    rng = np.random.default_rng(3)
    mixed = [rng.standard_normal(DIM) * scale for scale in (1e-300, 1e-90, 1e-3, 1.0, 7e5, 1e90, 1e300)]
    mixed += [rng.standard_normal(DIM).astype(np.float32) for _ in range(50)]  # as an embedder gives them
    for batch in (mixed, mixed[2:5], mixed[7:]):
        matrix = as_vectors(batch, DIM)
        assert matrix is not None
        assert all(np.array_equal(got, as_vector(row, DIM)) for row, got in zip(batch, matrix, strict=True))
    assert as_vectors([[math.nan] * DIM], DIM) is None


def test_huge_and_tiny_vectors_are_stored_and_searched_like_any_other(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        direction = unit(DIM, 7).astype(np.float64)
        huge = catalog.add(
            embedding=(direction * 1e300 / np.abs(direction).max()).tolist(), tenant="a", product_id="h"
        )
        tiny = catalog.add(embedding=[1e-300] * DIM, tenant="a", product_id="t")
        for _ in range(3):
            catalog.add(embedding=unit(DIM, _ + 20), tenant="a", product_id=f"p{_}")
        for query in ([1e300] * DIM, [1e-300] * DIM, (direction * 1e300).tolist()):
            hits = catalog.search(vector=query, tenant="a", k=5)
            assert len(hits) == 5
            assert all(math.isfinite(h.distance) and math.isfinite(h.score) for h in hits)
        assert catalog.search(vector=[1e-300] * DIM, tenant="a", k=1)[0].image_id == tiny
        assert catalog.search(vector=(direction * 1e300).tolist(), tenant="a", k=1)[0].image_id == huge
        with catalog.engine.connect() as conn:
            norms = conn.execute(text("SELECT l2_norm(embedding) FROM imgsearch.embeddings")).scalars().all()
        assert all(abs(n - 1) < 2e-3 for n in norms)  # unit length, as half precision keeps it
        with pytest.raises(InvalidInput, match="query vector is all zeros"):
            catalog.search(vector=[0.0] * DIM, k=1)


def test_the_database_refuses_a_zero_embedding_and_a_nan_price_from_any_writer(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        image_id = catalog.add(embedding=unit(DIM), tenant="a", product_id="p")
        with pytest.raises(IntegrityError, match="embeddings_not_zero_check"), catalog.engine.begin() as conn:
            conn.execute(
                text("UPDATE imgsearch.embeddings SET embedding = array_fill(0, ARRAY[768])::halfvec")
            )
        with (
            pytest.raises(IntegrityError, match="products_price_not_nan_check"),
            catalog.engine.begin() as conn,
        ):
            conn.execute(text("UPDATE imgsearch.products SET price = 'NaN'"))
        assert catalog.search(vector=unit(DIM), k=1)[0].image_id == image_id
