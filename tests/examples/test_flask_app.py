"""examples/flask: the Flask-SQLAlchemy app uploads through the catalog and joins its own stock
table to the composable search Select."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.settings import Settings
from tests.helpers import image_bytes

APP = Path(__file__).parents[2] / "examples" / "flask" / "app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_example_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SQLAlchemy resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shop(database_url: str, tiny_siglip: Path) -> Iterator[tuple[Any, Catalog, ModuleType]]:
    example = load_example()
    app = example.create_app(Settings(database_url=database_url, model=str(tiny_siglip)))
    catalog = app.extensions["imgsearch"]
    try:
        yield app, catalog, example
    finally:
        catalog.close()


def test_upload_then_search_with_the_apps_own_join(shop: tuple[Any, Catalog, ModuleType]) -> None:
    app, catalog, example = shop
    client = app.test_client()
    uploaded = client.post(
        "/products/sku-up/images",
        data={
            "image": (io.BytesIO(image_bytes(1)), "a.png"),
            "tenant": "acme",
            "category": "shoes",
            "price": "12",
        },
    )
    assert uploaded.status_code == 202 and uploaded.json["state"] == "pending"
    bad = client.post("/products/sku-bad/images", data={"image": (io.BytesIO(b"not an image"), "x.png")})
    assert bad.status_code == 400 and bad.json["type"] == "UnsupportedImage"

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((60, catalog.dim))
    ids = catalog.add_many(
        {
            "embedding": v,
            "tenant": "acme" if i < 40 else "globex",
            "product_id": f"sku-{i}",
            "category": "shoes",
            "price": i,
        }
        for i, v in enumerate(vectors)
    )
    with app.app_context(), example.db.session.begin():
        products = dict(
            example.db.session.execute(text("SELECT product_id, id FROM imgsearch.products")).all()
        )
        # only every fourth product is in stock
        example.db.session.add_all(
            example.Stock(product_pk=products[f"sku-{i}"], quantity=int(i % 4 == 0)) for i in range(60)
        )

    in_stock = client.get(f"/images/{ids[0]}/similar?tenant=acme&in_stock=1&k=20").json["hits"]
    expected = {f"sku-{i}" for i in range(1, 40) if i % 4 == 0}
    assert {h["product_id"] for h in in_stock} == expected  # min(k, matching): all 9 of them
    assert all(h["in_stock"] == 1 for h in in_stock)
    assert [h["distance"] for h in in_stock] == sorted(h["distance"] for h in in_stock)

    cheap = client.get(f"/images/{ids[0]}/similar?tenant=acme&price_max=10&k=20").json["hits"]
    assert {h["product_id"] for h in cheap} == {f"sku-{i}" for i in range(1, 11)}
    assert client.get(f"/images/{ids[50]}/similar?tenant=acme").status_code == 404  # another tenant's image

    by_text = client.get("/search?q=red+shoes&tenant=globex&k=5").json["hits"]
    assert len(by_text) == 5 and {h["product_id"] for h in by_text} <= {f"sku-{i}" for i in range(40, 60)}
    assert client.get("/search").status_code == 400
    assert client.get("/search?q=x&k=0").json["type"] == "InvalidQuery"
