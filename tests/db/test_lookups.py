"""Catalog.categories from the kept facet counts (imgsearch.db.lookups): the same answer as counting
the products, after any mix of uploads, updates and deletes, per shop and across shops."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import Engine

from imgsearch import Catalog, NotFound
from imgsearch.db import lookups
from tests.helpers import image_bytes, unit

TENANTS = ("acme", "globex")
CATEGORIES = ("shoes", "bags", "hats", "coats")


def _both(engine: Engine, model_id: int, shop: str | None) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        kept = [tuple(r) for r in conn.execute(lookups._kept_categories(model_id, shop))]
        counted = [tuple(r) for r in conn.execute(lookups._counted_categories(model_id, shop))]
    return kept, counted


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kept_category_counts_answer_as_counting_the_products(database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    images: list[tuple[int, str]] = []  # (image id, tenant)
    products: list[tuple[str, str]] = []  # (tenant, product id)
    with Catalog.open(database_url) as catalog:
        model_id = catalog.registered_model().id
        for step in range(60):
            op = rng.random()
            tenant = rng.choice(TENANTS)
            if op < 0.45 or not products:  # a product with an embedding, a new one or another image of one
                if products and rng.random() < 0.3:
                    tenant, product_id = rng.choice(products)
                else:
                    product_id = f"p{step}"
                category = rng.choice((*CATEGORIES, None))
                image_id = catalog.add(
                    embedding=unit(768, step), tenant=tenant, product_id=product_id, category=category
                )
                images.append((image_id, tenant))
                products.append((tenant, product_id))
            elif op < 0.55:  # an image not embedded yet: its product isn't findable
                catalog.add(image=image_bytes(step), tenant=tenant, product_id=f"w{step}", category=rng.choice(CATEGORIES))
            elif op < 0.75 and products:  # a product moved to another category
                tenant, product_id = rng.choice(products)
                catalog.update_product(product_id, tenant=tenant, category=rng.choice(CATEGORIES))
            elif op < 0.9 and images:
                image_id, tenant = images.pop(rng.randrange(len(images)))
                catalog.delete(image_id, tenant=tenant)
            elif products:
                gone = products[rng.randrange(len(products))]
                catalog.delete_product(gone[1], tenant=gone[0])
                products = [p for p in products if p != gone]
                images = [(i, t) for i, t in images if catalog_has(catalog, i, t)]
            if step % 20 == 19:
                for shop in (*TENANTS, None):
                    kept, counted = _both(catalog.engine, model_id, shop)
                    assert kept == counted, (step, shop)
        assert _both(catalog.engine, model_id, None)[0]  # something was counted
        assert catalog.categories(tenant="acme") == _both(catalog.engine, model_id, "acme")[1]


def catalog_has(catalog: Catalog, image_id: int, tenant: str) -> bool:
    try:
        catalog.get(image_id, tenant=tenant)
    except NotFound:  # deleted with its product
        return False
    return True
