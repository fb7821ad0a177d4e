"""imgsearch: Postgres-native image search.

>>> from imgsearch import Catalog
>>> catalog = Catalog.open()          # doctest: +SKIP
"""

from imgsearch import errors
from imgsearch.access import tenancy
from imgsearch.catalog import Catalog
from imgsearch.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DimensionMismatch,
    ImgSearchError,
    InvalidImage,
    InvalidInput,
    NotFound,
    TransientError,
)
from imgsearch.records import Hit, ImageRecord, ModelInfo
from imgsearch.settings import Settings

__all__ = [
    "Catalog",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DimensionMismatch",
    "Hit",
    "ImageRecord",
    "ImgSearchError",
    "InvalidImage",
    "InvalidInput",
    "ModelInfo",
    "NotFound",
    "Settings",
    "TransientError",
    "errors",
    "tenancy",
]

__version__ = "0.1.0"
