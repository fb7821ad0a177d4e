"""Regions over HTTP: hits name the region that matched (``regions: false`` searches whole images),
and ``POST /v1/search/look`` answers each object of a photo with its hits, as the library does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.settings import Settings
from imgsearch.work import pipeline
from tests.conftest import new_database
from tests.helpers import image_bytes
from tests.server.conftest import Api, problem, start_api


@pytest.fixture(scope="module")
def shop(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, Catalog]]:
    """A catalog of its own whose images have grid regions, and a server on it."""
    url = new_database(server_url, template_db)
    catalog = Catalog.open(url, settings=Settings(model=str(tiny_siglip), device="cpu"))
    catalog.regions.set(grid=2)
    catalog.add_many(
        {"image": image_bytes(i, (48, 32)), "tenant": "acme", "product_id": f"p{i}", "category": "tees"}
        for i in range(8)
    )
    pipeline.drain(
        catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
        downloads=catalog.settings.downloads(), progress=False,
    )  # fmt: skip
    api = start_api(url, tiny_siglip, tmp_path_factory.mktemp("regions-api"))
    try:
        yield api, catalog
    finally:
        api.stop()
        catalog.close()


def a_region(catalog: Catalog) -> tuple[int, list[int], list[float]]:
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text("SELECT image_id, box, embedding::text AS v FROM imgsearch.embeddings WHERE region = 2 LIMIT 1")
        ).one()
    return int(row.image_id), list(row.box), [float(x) for x in row.v.strip("[]").split(",")]


def hits(body: dict[str, Any]) -> list[tuple[int, Any]]:
    return [(h["image_id"], h["region"]) for h in body["hits"]]


def test_hits_carry_the_region_that_matched(shop: tuple[Api, Catalog]) -> None:
    api, catalog = shop
    image_id, box, vector = a_region(catalog)
    with api.client(api.key("acme")) as client:
        found = client.post("/v1/search", json={"vector": vector, "k": 5})
        assert found.status_code == 200, found.text
        assert hits(found.json())[0] == (image_id, box)
        assert hits(found.json()) == [(h.image_id, h.region) for h in catalog.search(vector=vector, k=5, tenant="acme")]
        whole = client.post("/v1/search", json={"vector": vector, "k": 8, "regions": False}).json()
        assert {region for _, region in hits(whole)} == {None} and len(whole["hits"]) == 8
        bad = client.post("/v1/search", json={"vector": vector, "regions": "yes"})
        problem(bad, 422)


def test_shop_the_look_answers_each_object_with_its_hits(shop: tuple[Api, Catalog]) -> None:
    api, catalog = shop
    photo = image_bytes(77, (64, 48))
    expected = catalog.search_look(image=photo, tenant="acme", k=3)
    with api.client(api.key("acme")) as client:
        answer = client.post("/v1/search/look", files={"file": ("look.png", photo)}, data={"k": "3"})
        assert answer.status_code == 200, answer.text
        objects = answer.json()["objects"]
        assert [o["box"] for o in objects] == [look.box for look in expected]
        assert [[h["image_id"] for h in o["hits"]] for o in objects] == [[h.image_id for h in look.hits] for look in expected]
        assert all(o["label"] is None and o["score"] is None for o in objects)
        some = client.post(
            "/v1/search/look", files={"file": ("look.png", photo), "params": (None, '{"objects": 2, "k": 1}')}
        ).json()["objects"]
        assert len(some) == 2 and all(len(o["hits"]) == 1 for o in some)
        filtered = client.post("/v1/search/look", files={"file": ("look.png", photo)}, data={"category": "bags"})
        assert all(o["hits"] == [] for o in filtered.json()["objects"])
        assert "objects must be" in problem(
            client.post("/v1/search/look", files={"file": ("look.png", photo)}, data={"objects": "0"}), 400
        )["detail"]
        assert "shop the look takes" in problem(
            client.post("/v1/search/look", files={"file": ("look.png", photo)}, data={"diversity": "0.5"}), 400
        )["detail"]
        assert "not a recognised image format" in problem(
            client.post("/v1/search/look", files={"file": ("x.txt", b"not an image")}), 400
        )["detail"]
        problem(client.post("/v1/search/look", json={"k": 3}), 415)
        problem(client.post("/v1/search/look", data={"k": "3"}), 415)


def test_a_tenant_sees_only_its_own_products_in_each_look(shop: tuple[Api, Catalog]) -> None:
    api, catalog = shop
    catalog.add(image_bytes(500, (32, 32)), tenant="globex", product_id="g1", embedding=np.ones(catalog.dim))
    with api.client(api.key("globex")) as client:
        objects = client.post("/v1/search/look", files={"file": ("look.png", image_bytes(78, (40, 40)))}).json()["objects"]
        assert {h["product_id"] for o in objects for h in o["hits"]} == {"g1"}
