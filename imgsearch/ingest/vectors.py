"""Checking caller-supplied vectors before they reach SQL, and making them unit length.

Cosine distance ignores a vector's length, so every vector is stored and searched at unit length.
Normalising divides by the largest magnitude first: a vector of huge but finite values (1e300)
would overflow its norm to infinity and come out as zeros, and one of tiny values (1e-300) would
underflow it to zero; both are valid directions and come out right. Unit length also keeps every
value inside halfvec's range (float16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from imgsearch.errors import DimensionMismatch, InvalidInput

Vector = npt.NDArray[np.float32]


def as_vector(value: Any, dim: int | None, what: str = "embedding") -> Vector:
    """``value`` as a unit float32 vector of length ``dim`` (any length for None), or a clear
    :class:`InvalidInput` naming ``what`` and why.

    >>> as_vector([3, 4], 2).round(2).tolist()
    [0.6, 0.8]
    >>> as_vector([1e300, 1e300], 2).round(3).tolist()
    [0.707, 0.707]
    """
    expected = "numbers" if dim is None else f"{dim} numbers"
    if value is None or isinstance(value, str | bytes | dict | set):
        raise InvalidInput(f"{what} must be a sequence of {expected}, got {type(value).__name__}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{what} must be a sequence of {expected}: {exc}") from exc
    if array.ndim != 1:
        raise InvalidInput(f"{what} must be one-dimensional, got shape {array.shape}")
    if dim is not None and array.shape[0] != dim:
        raise DimensionMismatch(array.shape[0], dim, what)
    if array.shape[0] == 0:
        raise InvalidInput(f"{what} is empty; a vector needs at least one number")
    squares = float(_squares(array[np.newaxis, :])[0])
    if _SAFE_SQUARES[0] < squares < _SAFE_SQUARES[1]:
        # finite, not zero, and its norm neither overflows nor underflows: divide by it at once
        # (the checks and the scaling below cost more than a search's statement's binding)
        fast: Vector = (array / math.sqrt(squares)).astype(np.float32)
        return fast
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidInput(f"{what} contains {array[bad]} at index {bad}; only finite numbers are allowed")
    unit = _unit_rows(array[np.newaxis, :])
    if unit is None:
        raise InvalidInput(f"{what} is all zeros; cosine distance is undefined for a zero vector")
    row: Vector = unit[0]
    return row


# a sum of squares in this range comes from finite values whose own squares neither overflowed
# nor lost the digits that matter (each one under 1e-308 is below 1e-108 of the sum)
_SAFE_SQUARES = (1e-200, 1e200)


def as_vectors(values: Sequence[Any], dim: int) -> npt.NDArray[np.float32] | None:
    """Many vectors at once, as :func:`as_vector` makes each: a ``(len(values), dim)`` matrix of
    unit rows; None when any of them isn't a good vector (check those one at a time, for the
    message naming which and why)."""
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        return None
    squares = _squares(matrix)
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        unit: npt.NDArray[np.float32] = (matrix / np.sqrt(squares)[:, np.newaxis]).astype(np.float32)
    unsafe = ~((squares > _SAFE_SQUARES[0]) & (squares < _SAFE_SQUARES[1]))  # each row as as_vector takes it
    if unsafe.any():  # the rest the scaled way, if they are vectors at all
        rest = _unit_rows(matrix[unsafe]) if np.isfinite(matrix[unsafe]).all() else None
        if rest is None:
            return None
        unit[unsafe] = rest
    return unit


def _squares(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's sum of squares (inf or nan where a value is), summed alike for one row
    (:func:`as_vector`) and many (:func:`as_vectors`): the same vector comes out the same, to the
    bit, either way (its content hash depends on it)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        squares: npt.NDArray[np.float64] = np.einsum("ij,ij->i", matrix, matrix)
    return squares


def _unit_rows(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float32] | None:
    """Each finite row at unit length, scaled by its largest magnitude before its norm is taken
    (no overflow, no underflow); None when a row is all zeros."""
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    if not (peaks > 0).all():
        return None
    scaled = matrix / peaks  # every row's largest value is now +-1: its norm lies in [1, sqrt(dim)]
    unit: npt.NDArray[np.float32] = (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit
