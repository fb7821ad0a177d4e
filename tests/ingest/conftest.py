"""The ingest tests' catalog: the tiny SigLIP checkpoint, as a user opens one (modules that need
another define their own ``catalog``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsearch import Catalog
from imgsearch.settings import Settings


@pytest.fixture
def catalog(database_url: str, tiny_siglip: Path) -> Iterator[Catalog]:
    with Catalog.open(
        database_url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))
    ) as opened:
        yield opened
