"""``/v1/search``, ``/v1/search/image`` and ``/v1/categories`` over real HTTP: every query kind,
filter and option gives what ``catalog.search`` gives in-process for the same tenant."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsearch import Catalog
from imgsearch.records import Hit
from imgsearch.search import understanding
from imgsearch.settings import Settings
from tests.helpers import clustered, image_bytes, serve_files
from tests.server.conftest import Api, problem

DIM = 32
N = 120


@pytest.fixture(scope="module")
def shop(api: Api, tiny_siglip: Path) -> Iterator[tuple[str, str, Catalog, list[int]]]:
    """A tenant with 120 products in 4 categories (bring-your-own vectors in clusters) and 6 real
    pictures (stored bytes and their embeddings), its key, and an in-process catalog on the same
    database to compare with."""
    tenant = "search-shop"
    settings = Settings(model=str(tiny_siglip), device="cpu")
    catalog = Catalog.open(api.database_url, settings=settings)
    data, labels = clustered(N, DIM, clusters=4, seed=5)
    rows: list[dict[str, Any]] = [
        {
            "embedding": data[i],
            "tenant": tenant,
            "product_id": f"sku-{i // 2}",  # two images per product, which agree on its fields
            "category": ["mugs", "caps", "lamps", "bags"][labels[i - i % 2]],
            "price": float((i - i % 2) % 40),
            "attributes": {"color": ["red", "blue", "green"][(i // 2) % 3], "i": i // 2},
        }
        for i in range(N)
    ]
    pictures = [image_bytes(300 + i, size=(40, 40)) for i in range(6)]
    vectors_of_pictures = [catalog.embedder.embed_image(p) for p in pictures]
    rows += [
        {
            "image": picture,
            "embedding": vector,
            "tenant": tenant,
            "product_id": f"pic-{i}",
            "category": "pictures",
            "price": 5,
        }
        for i, (picture, vector) in enumerate(zip(pictures, vectors_of_pictures, strict=True))
    ]
    ids = catalog.add_many(rows)
    try:
        yield tenant, api.key(tenant), catalog, ids
    finally:
        catalog.close()


def hits_json(hits: list[Hit]) -> list[tuple[int, str, float]]:
    return [(h.image_id, h.product_id, round(h.distance, 5)) for h in hits]


def http_hits(body: dict[str, Any]) -> list[tuple[int, str, float]]:
    return [(h["image_id"], h["product_id"], round(h["distance"], 5)) for h in body["hits"]]


QUERIES: list[dict[str, Any]] = [
    {"k": 5},
    {"k": 7, "offset": 3},
    {"category": "mugs", "k": 10},
    {"category": ["caps", "bags"], "k": 10},
    {"price_min": 10, "price_max": 20.5, "k": 10},
    {"price_min": "3.25", "k": 4},
    {"attributes": {"color": "red"}, "k": 8},
    {"group_by_product": True, "k": 10},
    {"diversity": 0.5, "k": 6},
    {"expand": 3, "k": 6},
    {"min_score": 0.5, "k": 50},
    {"category": "lamps", "price_max": 30, "attributes": {"color": "green"}, "k": 20},
]


@pytest.mark.parametrize("options", QUERIES, ids=[json.dumps(q) for q in QUERIES])
def test_vector_search_equals_the_library(
    api: Api, shop: tuple[str, str, Catalog, list[int]], options: dict[str, Any]
) -> None:
    tenant, key, catalog, _ = shop
    vector = [0.3] * DIM
    expected = catalog.search(vector=vector, tenant=tenant, **options)
    with api.client(key) as client:
        response = client.post("/v1/search", json={"vector": vector, **options})
    assert response.status_code == 200, response.text
    assert http_hits(response.json()) == hits_json(expected)
    for hit in response.json()["hits"]:
        assert set(hit) == {
            "image_id", "product_id", "tenant", "category", "price", "currency", "title", "brand",
            "distance", "score", "matched_by", "region",
        }  # fmt: skip
        assert hit["tenant"] == tenant
        assert abs(hit["score"] - (1 - hit["distance"])) < 1e-9


def test_text_search_has_probabilities(api: Api, shop: tuple[str, str, Catalog, list[int]]) -> None:
    tenant, key, catalog, _ = shop
    expected = catalog.search(text="a red mug", tenant=tenant, k=6)
    with api.client(key) as client:
        body = client.post("/v1/search", json={"text": "a red mug", "k": 6}).json()
        assert http_hits(body) == hits_json(expected)
        assert [h["probability"] for h in body["hits"]] == pytest.approx([h.probability for h in expected])
        distances = [h["distance"] for h in body["hits"]]
        assert distances == sorted(distances), "nearest first"
        cut = sorted(h["probability"] for h in body["hits"])[3]
        fewer = client.post("/v1/search", json={"text": "a red mug", "k": 6, "min_probability": cut}).json()
        assert all(h["probability"] >= cut for h in fewer["hits"]) and len(fewer["hits"]) == 3
        problem(client.post("/v1/search", json={"vector": [0.1] * DIM, "min_probability": 0.5}), 400)


def test_more_like_this_image_and_product(api: Api, shop: tuple[str, str, Catalog, list[int]]) -> None:
    tenant, key, catalog, ids = shop
    with api.client(key) as client:
        body = client.post("/v1/search", json={"similar_to": ids[10], "k": 5}).json()
        assert http_hits(body) == hits_json(catalog.search(similar_to=ids[10], tenant=tenant, k=5))
        assert ids[10] not in {h["image_id"] for h in body["hits"]}
        body = client.post(
            "/v1/search", json={"similar_to_product": "sku-3", "k": 5, "category": "mugs"}
        ).json()
        expected = catalog.search(similar_to_product="sku-3", tenant=tenant, k=5, category="mugs")
        assert http_hits(body) == hits_json(expected)
        assert "sku-3" not in {h["product_id"] for h in body["hits"]}
        assert (
            "no embedded image"
            in problem(client.post("/v1/search", json={"similar_to": 10**12}), 404)["detail"]
        )
        assert (
            "has no product"
            in problem(client.post("/v1/search", json={"similar_to_product": "nope"}), 404)["detail"]
        )


def test_paging_by_offset(api: Api, shop: tuple[str, str, Catalog, list[int]]) -> None:
    _, key, _, _ = shop
    with api.client(key) as client:
        everything = client.post("/v1/search", json={"vector": [0.2] * DIM, "k": 30}).json()["hits"]
        pages = [
            client.post("/v1/search", json={"vector": [0.2] * DIM, "k": 10, "offset": offset}).json()["hits"]
            for offset in (0, 10, 20)
        ]
    assert [h["image_id"] for page in pages for h in page] == [h["image_id"] for h in everything]


def test_search_by_uploaded_image_and_by_url(
    api: Api, shop: tuple[str, str, Catalog, list[int]], tmp_path: Path
) -> None:
    tenant, key, catalog, _ = shop
    query = image_bytes(302, size=(40, 40))  # the bytes of pic-2
    expected = hits_json(catalog.search(image=query, tenant=tenant, k=4, category="pictures"))
    assert expected[0][1] == "pic-2" and expected[0][2] == pytest.approx(0, abs=1e-3)
    (tmp_path / "q.png").write_bytes(query)
    with api.client(key) as client:
        by_fields = client.post(
            "/v1/search/image", files={"file": ("q.png", query)}, data={"k": "4", "category": "pictures"}
        )
        assert by_fields.status_code == 200, by_fields.text
        assert http_hits(by_fields.json()) == expected
        params = json.dumps({"k": 4, "category": ["pictures"], "price_max": 100})
        by_params = client.post(
            "/v1/search/image", files={"file": ("q.png", query), "params": (None, params)}
        )
        assert http_hits(by_params.json()) == expected
        with serve_files(tmp_path) as server:
            by_url = client.post(
                "/v1/search", json={"image_url": f"{server.url}/q.png", "k": 4, "category": "pictures"}
            )
            assert http_hits(by_url.json()) == expected
            missing = client.post("/v1/search", json={"image_url": f"{server.url}/none.png"})
            assert "HTTP 404" in problem(missing, 400)["detail"]
        body = problem(client.post("/v1/search/image", files={"file": ("q.txt", b"not an image")}), 400)
        assert "not a recognised image format" in body["detail"]
        problem(client.post("/v1/search/image", data={"k": "3"}), 415)  # a form with no file part
        problem(client.post("/v1/search/image", files={"file": ("q.png", query)}, data={"k": "three"}), 400)
        problem(
            client.post("/v1/search/image", files={"file": ("q.png", query), "params": (None, "[1]")}), 400
        )
        problem(client.post("/v1/search/image", json={"k": 3}), 415)
        body = problem(
            client.post("/v1/search/image", files={"file": ("q.png", query)}, data={"bogus": "1"}), 400
        )
        assert "unknown form fields ['bogus']" in body["detail"]
        both = client.post(
            "/v1/search/image",
            files={"file": ("q.png", query), "params": (None, '{"k": 4, "category": "pictures"}')},
            data={"k": "2", "group_by_product": ""},  # a field over params' key; a blank one is not given
        )
        assert http_hits(both.json()) == expected[:2]
        twice = client.post("/v1/search/image", files={"file": ("q.png", query)}, data={"k": ["2", "3"]})
        assert "form field 'k' is given 2 times" in problem(twice, 400)["detail"]
        flag = client.post("/v1/search/image", files={"file": ("q.png", query)}, data={"consistent": "maybe"})
        assert "consistent must be one of" in problem(flag, 400)["detail"]


def test_categories(api: Api, shop: tuple[str, str, Catalog, list[int]]) -> None:
    tenant, key, catalog, _ = shop
    with api.client(key) as client:
        body = client.get("/v1/categories").json()
    names = [c["name"] for c in body["categories"]]
    assert set(names) == {"mugs", "caps", "lamps", "bags", "pictures"}
    assert [(c["name"], c["products"]) for c in body["categories"]] == catalog.categories(tenant=tenant)
    counts = [c["products"] for c in body["categories"]]
    assert counts == sorted(counts, reverse=True)


def test_region_queries_search_with_the_crop(api: Api, shop: tuple[str, str, Catalog, list[int]]) -> None:
    """A box drawn on the query image: the search embeds that region only, in the library, over
    HTTP (multipart and image_url alike) and from the CLI; a box that isn't one is refused."""
    from PIL import Image as PILImage

    tenant, key, catalog, _ = shop
    # pic-2's bytes pasted into the top-left corner of a bigger, noisy picture
    pic = PILImage.open(io.BytesIO(image_bytes(302, size=(40, 40))))
    canvas = PILImage.open(io.BytesIO(image_bytes(999, size=(120, 90))))
    canvas.paste(pic, (0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    photo = buf.getvalue()
    crop = io.BytesIO()
    canvas.crop((0, 0, 40, 40)).save(crop, format="PNG")
    expected = hits_json(catalog.search(image=crop.getvalue(), tenant=tenant, k=4, category="pictures"))
    assert expected[0][1] == "pic-2" and expected[0][2] == pytest.approx(0, abs=1e-3)
    boxed = hits_json(
        catalog.search(image=photo, box=(0, 0, 40, 40), tenant=tenant, k=4, category="pictures")
    )
    assert boxed == expected
    assert hits_json(catalog.search(image=photo, tenant=tenant, k=4, category="pictures"))[0][2] > 1e-2
    with api.client(key) as client:
        response = client.post(
            "/v1/search/image",
            files={"file": ("q.png", photo)},
            data={"k": "4", "category": "pictures", "box": "0,0,40,40"},
        )
        assert response.status_code == 200, response.text
        assert http_hits(response.json()) == expected
        for box, message in (
            ("0,0,400,40", "is not a region of the 120x90 image"),
            ("10,10,5,40", "is not a region"),
            ("0,0,40", "box must be four numbers"),
            ("a,0,40,40", "box must be a number"),
        ):
            bad = client.post("/v1/search/image", files={"file": ("q.png", photo)}, data={"box": box})
            assert message in problem(bad, 400)["detail"], box
        text_box = client.post("/v1/search", json={"text": "a picture", "box": [0, 0, 4, 4]})
        assert "box applies to image queries only" in problem(text_box, 400)["detail"]


def test_hybrid_search_with_facets_and_the_words_understood(
    api: Api, shop: tuple[str, str, Catalog, list[int]]
) -> None:
    tenant, key, catalog, _ = shop
    # the two products' categories (drawn by the fixture's clusters): sku-n has attributes i = n
    first, second = (
        catalog.search(vector=[0.3] * DIM, tenant=tenant, attributes={"i": n}, k=1)[0].category
        for n in (1, 2)
    )
    catalog.update_products(
        [
            {"tenant": tenant, "product_id": "sku-1", "title": "Enamel camping mug", "brand": "Stanley"},
            {"tenant": tenant, "product_id": "sku-2", "title": "Stoneware coffee mug", "brand": "Kinto"},
        ]
    )
    time.sleep(understanding.VOCABULARY_REFRESH_SECONDS)  # the server reads changed words this often
    query = {"text": f"stanley {first} under 30", "k": 5, "facets": True}
    expected = catalog.search(tenant=tenant, **query)
    with api.client(key) as client:
        body = client.post("/v1/search", json=query).json()
        assert body["mode"] == "hybrid" == expected.mode
        assert body["understood"] == {
            "text": "", "category": first, "brand": "Stanley", "price_max": 30.0, "fallback": False
        }  # fmt: skip
        assert [h["product_id"] for h in body["hits"]] == ["sku-1"] == [h.product_id for h in expected]
        hit = body["hits"][0]
        assert (hit["title"], hit["brand"], hit["currency"]) == ("Enamel camping mug", "Stanley", None)
        assert hit["matched_by"] == {"semantic": 1, "lexical": 1}
        assert body["total"] == 1 and body["facets"]["brand"] == {"Stanley": 1}
        assert body["facets"]["price"] == [
            {"from": b.low, "to": b.high, "count": b.count} for b in expected.facets.price
        ]
        lexical = client.post(
            "/v1/search", json={"text": "coffee", "mode": "lexical", "parse": False, "facets": True}
        ).json()
        assert [h["product_id"] for h in lexical["hits"]] == ["sku-2"]
        assert lexical["hits"][0]["distance"] is None and lexical["hits"][0]["matched_by"] == {"lexical": 1}
        assert "understood" not in lexical and lexical["facets"]["category"] == {second: 1}
        problem(client.post("/v1/search", json={"vector": [0.1] * DIM, "mode": "lexical"}), 400)
        problem(client.post("/v1/search", json={"text": "x", "mode": "fuzzy"}), 422)
        # product text through an upload and a change, over HTTP
        item = {
            "product_id": "desk-1",
            "embedding": [0.2] * DIM,
            "title": "Walnut desk lamp",
            "brand": "Muuto",
        }
        uploaded = client.post("/v1/images", json={"items": [item]})
        assert uploaded.status_code == 201
        record = client.get(f"/v1/images/{uploaded.json()['ids'][0]}").json()
        assert (record["title"], record["brand"], record["description"]) == (
            "Walnut desk lamp",
            "Muuto",
            None,
        )
        walnut = client.post("/v1/search", json={"text": "walnut", "mode": "lexical", "parse": False}).json()
        assert [(h["product_id"], h["title"], h["brand"]) for h in walnut["hits"]] == [
            ("desk-1", "Walnut desk lamp", "Muuto")
        ]
        changed = client.patch(
            "/v1/products/desk-1", json={"title": "Oak desk lamp", "description": "Dimmable."}
        )
        assert changed.json() == {"product_id": "desk-1", "changed": True}
        oak = client.post(
            "/v1/search", json={"text": "dimmable oak", "mode": "lexical", "parse": False}
        ).json()
        assert [h["product_id"] for h in oak["hits"]] == ["desk-1"] and oak["hits"][0][
            "title"
        ] == "Oak desk lamp"
        problem(client.post("/v1/images", json={"items": [{**item, "title": "t" * 1001}]}), 400)
        assert client.delete("/v1/products/desk-1").status_code == 200
    catalog.update_products(
        [{"tenant": tenant, "product_id": p, "title": None, "brand": None} for p in ("sku-1", "sku-2")]
    )


def test_totals_are_bounded_by_default_exact_on_request(
    api: Api, shop: tuple[str, str, Catalog, list[int]]
) -> None:
    tenant, key, catalog, _ = shop
    products = catalog.search(vector=[0.3] * DIM, tenant=tenant, total=True).total
    assert products == N // 2 + 6
    with api.client(key) as client:
        default = client.post("/v1/search", json={"vector": [0.3] * DIM}).json()
        assert (default["total"], default["total_relation"]) == (products, "eq")  # under 10,000: exact
        bounded = client.post("/v1/search", json={"vector": [0.3] * DIM, "total": 10}).json()
        assert (bounded["total"], bounded["total_relation"]) == (10, "gte")
        exact = client.post("/v1/search", json={"vector": [0.3] * DIM, "total": True}).json()
        assert (exact["total"], exact["total_relation"]) == (products, "eq")
        none = client.post("/v1/search", json={"vector": [0.3] * DIM, "total": False}).json()
        assert (none["total"], none["total_relation"]) == (None, None)
        for bad in (0, -3, 1_000_001):  # out of range, named as k's range is
            detail = problem(client.post("/v1/search", json={"vector": [0.3] * DIM, "total": bad}), 400)["detail"]
            assert detail.startswith("total must be true, false or a whole number from 1 to 1,000,000")
        for bad in (2.5, "10", None):  # not a boolean or an integer
            problem(client.post("/v1/search", json={"vector": [0.3] * DIM, "total": bad}), 422)


def test_a_text_on_an_image_only_model_is_matched_lexically_and_the_answer_says_so(
    server_url: str, template_db: str, tiny_dinov3: Path, tmp_path: Path
) -> None:
    import numpy as np

    from imgsearch.samples import dataset
    from tests.conftest import new_database
    from tests.server.conftest import start_api

    url = new_database(server_url, template_db)
    items = dataset.draw(6, seed=11, size=48)
    with Catalog.open(url, model=f"{tiny_dinov3}#mean") as catalog:
        vectors = catalog.embedder.embed_images([item.png for item in items])
        catalog.add_many([{"tenant": "acme", "product_id": f"p{i}", "image": item.png, "title": item.caption,
                           "embedding": np.asarray(v)} for i, (item, v) in enumerate(zip(items, vectors, strict=True))])  # fmt: skip
    api = start_api(url, Path(f"{tiny_dinov3}#mean"), tmp_path)
    try:
        with api.client(api.key("acme")) as client:
            found = client.post("/v1/search", json={"text": items[2].caption, "k": 3})
            assert found.status_code == 200, found.text
            body = found.json()
            assert body["mode"] == "lexical" and "embeds no text" in body["notice"]
            assert body["hits"][0]["product_id"] in {f"p{i}" for i, d in enumerate(items) if d.caption == items[2].caption}
            refused = problem(client.post("/v1/search", json={"text": "a red mug", "mode": "semantic"}), 400)
            assert "image-only backbone" in refused["detail"]
            plain = client.post("/v1/search", json={"similar_to": body["hits"][0]["image_id"], "k": 2})
            assert plain.status_code == 200 and "notice" not in plain.json()
    finally:
        api.stop()
