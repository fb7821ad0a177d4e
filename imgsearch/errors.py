"""Every exception imgsearch raises.

User mistakes are separate from transient faults, so callers (and workers) can tell
what to fix from what to retry::

    ImgSearchError
    ├── InvalidInput (also a ValueError)       a value the caller passed is wrong
    │   ├── DimensionMismatch                  a vector of the wrong length
    │   ├── InvalidImage                       bytes that are not a usable image
    │   │   ├── EmptyImage                     zero bytes
    │   │   ├── ImageTooLarge                  over the byte or pixel limit
    │   │   └── UnsupportedImage               not an image, truncated, or unusable shape
    │   ├── DuplicateImage                     on_duplicate="reject": a near-copy of another product's image
    │   ├── InvalidEvents                      a batch of feedback events with bad ones, each named
    │   ├── LimitReached                       past a limit on what may be kept (a shop's endpoints)
    │   ├── InvalidRegions                     a region rule that can't be (a grid's size, a detector)
    │   └── InvalidQuery                       a search asked for the impossible
    ├── NotFound (also a LookupError)          no such image, product or model
    ├── ConfigurationError                     settings or environment are wrong
    │   └── ModelUnavailable                   weights can't be found or downloaded
    └── TransientError                         worth retrying later
        ├── DatabaseUnavailable                PostgreSQL can't be reached
        └── UnknownHost                        a URL's host doesn't resolve (a query's is its caller's mistake)
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "DimensionMismatch",
    "DuplicateImage",
    "EmptyImage",
    "ImageTooLarge",
    "ImgSearchError",
    "InvalidEvents",
    "InvalidImage",
    "InvalidInput",
    "InvalidQuery",
    "InvalidRegions",
    "LimitReached",
    "ModelUnavailable",
    "NotFound",
    "TransientError",
    "UnknownHost",
    "UnsupportedImage",
]


class ImgSearchError(Exception):
    """Base of every imgsearch exception.

    ``index`` is the position of the row at fault when a call took many rows (``add_many``,
    ``update_products``; its message names the row too), else None.
    """

    index: int | None = None

    def at_row(self, index: int | None, name: str | None = None) -> ImgSearchError:
        """This error, naming the row at fault: ``index`` set, and its message prefixed with
        ``name`` (default ``"row <index>"``). Type and other attributes stay; returns ``self``."""
        self.args = (f"{name or f'row {index}'}: {self}",)
        self.index = index
        return self


class InvalidInput(ImgSearchError, ValueError):
    """A value passed by the caller is wrong; the message names it and what was expected."""


class DimensionMismatch(InvalidInput):
    """A vector's length differs from the model's dimension."""

    def __init__(self, got: int, expected: int, what: str = "embedding") -> None:
        super().__init__(f"{what} has {got} dimensions, expected {expected}")
        self.got = got
        self.expected = expected


class InvalidImage(InvalidInput):
    """Bytes that can't be used as an image."""


class EmptyImage(InvalidImage):
    """An image of zero bytes."""


class ImageTooLarge(InvalidImage):
    """An image over the configured byte or pixel limit."""


class UnsupportedImage(InvalidImage):
    """Not an image, a truncated one, or one whose shape can't be embedded."""


class DuplicateImage(InvalidInput):
    """An upload with ``on_duplicate="reject"`` is a near-copy of an image of another product of
    the same tenant; nothing was written. What it copies: the stored image ``image_id``, or the
    row ``row`` of the same call (``image_id`` None: that row has no id yet), of ``product_id``."""

    def __init__(
        self,
        message: str,
        *,
        image_id: int | None,
        product_id: str,
        hamming: int,
        distance: float | None,
        row: int | None = None,
    ) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.row = row
        self.product_id = product_id
        self.hamming = hamming
        self.distance = distance


class LimitReached(InvalidInput):
    """A call that would pass a limit on what may be kept (e.g. a tenant's webhook endpoints)."""


class InvalidQuery(InvalidInput):
    """A search whose arguments contradict each other."""


class InvalidRegions(InvalidInput):
    """A region rule that can't be: a grid's size, a detector that won't load, a bad limit."""


class NotFound(ImgSearchError, LookupError):
    """No such image, product or model (in the caller's tenant)."""


class ConfigurationError(ImgSearchError):
    """Settings or environment are wrong."""


class ModelUnavailable(ConfigurationError):
    """Model weights can't be loaded: not cached and the hub can't be reached, or a bad path."""


class TransientError(ImgSearchError):
    """A fault that may go away: retry later."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL can't be reached."""


class UnknownHost(TransientError):
    """A URL's host name doesn't resolve. Transient for a worker downloading an upload (DNS may
    answer later); for a query's image URL it is the caller's to fix (HTTP 400)."""


class InvalidEvents(InvalidInput):
    """A batch of feedback events with bad ones: ``problems`` lists each as ``(index, message)``;
    nothing of the batch was recorded."""

    def __init__(self, message: str, problems: list[tuple[int, str]], unknown: bool = False) -> None:
        super().__init__(message)
        self.problems = problems
        self.unknown = unknown  # every bad event names a search the caller has none of
