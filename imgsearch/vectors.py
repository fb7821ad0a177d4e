"""Checking caller-supplied vectors before they reach SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from imgsearch.errors import DimensionMismatch, InvalidInput

Vector = npt.NDArray[np.float32]


def as_vector(value: Any, dim: int, what: str = "embedding") -> Vector:
    """``value`` as an L2-normalised float32 vector of length ``dim``, or a clear :class:`InvalidInput`.

    >>> as_vector([3, 4], 2).round(2).tolist()
    [0.6, 0.8]
    """
    if value is None or isinstance(value, str | bytes | dict | set):
        raise InvalidInput(f"{what} must be a sequence of {dim} numbers, got {type(value).__name__}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be a sequence of {dim} numbers: {exc}") from exc
    if array.ndim != 1:
        raise InvalidInput(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.shape[0] != dim:
        raise DimensionMismatch(array.shape[0], dim, what)
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidInput(f"{what} contains {array[bad]} at index {bad}; only finite numbers are allowed")
    norm = float(np.linalg.norm(array))
    if norm == 0.0:
        raise InvalidInput(f"{what} is all zeros; cosine distance is undefined for a zero vector")
    # Cosine distance ignores length, and unit length keeps every value inside float16's range
    # (halfvec storage): no overflow to inf, no underflow of tiny vectors to zero.
    return (array / norm).astype(np.float32)


def as_vectors(values: Sequence[Any], dim: int) -> npt.NDArray[np.float32] | None:
    """Many vectors at once, as :func:`as_vector` makes each: a ``(len(values), dim)`` matrix of
    unit rows; None when any of them isn't a good vector (check those one at a time, for the
    message naming which and why)."""
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] != dim or not np.isfinite(matrix).all():
        return None
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not (norms > 0).all():
        return None
    unit: npt.NDArray[np.float32] = (matrix / norms).astype(np.float32)
    return unit
