"""``/v1/products`` over real HTTP: a product's fields, feeds (all or nothing), deletes."""

from __future__ import annotations

from tests.helpers import unit
from tests.server.conftest import Api, problem

DIM = 32


def upload(client, products: list[str], category: str = "mugs", price: float = 10.0) -> list[int]:  # type: ignore[no-untyped-def]
    items = [
        {"embedding": unit(DIM, i).tolist(), "product_id": p, "category": category, "price": price}
        for i, p in enumerate(products)
    ]
    response = client.post("/v1/images", json={"items": items})
    assert response.status_code == 201, response.text
    ids: list[int] = response.json()["ids"]
    return ids


def test_patch_sets_given_fields_and_searches_see_them_at_once(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        (image_id,) = upload(client, ["sku-1"])
        response = client.patch("/v1/products/sku-1", json={"price": 7.5, "attributes": {"size": "L"}})
        assert response.status_code == 200 and response.json() == {"product_id": "sku-1", "changed": True}
        image = client.get(f"/v1/images/{image_id}").json()
        assert (image["price"], image["category"], image["attributes"]) == (7.5, "mugs", {"size": "L"})
        hits = client.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "price_max": 8}).json()[
            "hits"
        ]
        assert [h["image_id"] for h in hits] == [image_id]
        again = client.patch("/v1/products/sku-1", json={"price": "7.50"})
        assert again.json() == {"product_id": "sku-1", "changed": False}
        cleared = client.patch("/v1/products/sku-1", json={"category": None})
        assert cleared.json()["changed"] and client.get(f"/v1/images/{image_id}").json()["category"] is None
        assert "nothing to change" in problem(client.patch("/v1/products/sku-1", json={}), 400)["detail"]
        assert (
            "has no product 'nope'"
            in problem(client.patch("/v1/products/nope", json={"price": 1}), 404)["detail"]
        )
        problem(client.patch("/v1/products/sku-1", json={"price": -1}), 400)
        problem(client.patch("/v1/products/sku-1", json={"currency": "euros"}), 400)
        problem(client.patch("/v1/products/sku-1", json={"price": [1]}), 422)
        problem(client.patch("/v1/products/sku-1", json={"colour": "red"}), 422)


def test_product_ids_with_odd_characters(api: Api, tenant: str) -> None:
    odd = "a/b c?d#é"
    with api.client(api.key(tenant)) as client:
        upload(client, [odd])
        from urllib.parse import quote

        response = client.patch(f"/v1/products/{quote(odd, safe='')}", json={"price": 3})
        assert response.status_code == 200, response.text
        assert response.json() == {"product_id": odd, "changed": True}
        response = client.delete(f"/v1/products/{quote(odd, safe='')}")
        assert response.json() == {"product_id": odd, "deleted_images": 1}


def test_feed_is_all_or_nothing(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        ids = upload(client, ["a", "b", "c"])
        feed = [
            {"product_id": "a", "price": 1},
            {"product_id": "b", "price": 2},
            {"product_id": "zzz", "price": 3},
        ]
        body = problem(client.post("/v1/products:update", json={"items": feed}), 404)
        assert body["index"] == 2 and "row 2" in body["detail"]
        bad = [{"product_id": "a", "price": 1}, {"product_id": "b", "price": "free"}]
        assert problem(client.post("/v1/products:update", json={"items": bad}), 400)["index"] == 1
        twice = [{"product_id": "a", "price": 1}, {"product_id": "a", "price": 2}]
        assert (
            f"price of product 'a' of tenant {tenant!r} is 2 here, but 1 in row 0"
            in problem(client.post("/v1/products:update", json={"items": twice}), 400)["detail"]
        )
        assert {client.get(f"/v1/images/{i}").json()["price"] for i in ids} == {10.0}, "nothing written"
        good = [
            {"product_id": "a", "price": 1},
            {"product_id": "b", "category": "caps"},
            {"product_id": "c", "price": 10},
        ]
        response = client.post("/v1/products:update", json={"items": good})
        assert response.status_code == 200 and response.json() == {"updated": 2, "unchanged": 1}
        assert client.get(f"/v1/images/{ids[1]}").json()["category"] == "caps"
        empty = client.post("/v1/products:update", json={"items": []})
        assert empty.json() == {"updated": 0, "unchanged": 0}


def test_delete_product_with_its_images(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        ids = upload(client, ["p", "p", "q"])
        response = client.delete("/v1/products/p")
        assert response.status_code == 200 and response.json() == {"product_id": "p", "deleted_images": 2}
        problem(client.get(f"/v1/images/{ids[0]}"), 404)
        assert client.get(f"/v1/images/{ids[2]}").status_code == 200
        problem(client.delete("/v1/products/p"), 404)


def test_admin_keys_name_the_tenant(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        (image_id,) = upload(client, ["sku"])
    with api.client(api.key(admin=True)) as admin:
        assert (
            "admin key names the product's tenant"
            in problem(admin.patch("/v1/products/sku", json={"price": 1}), 400)["detail"]
        )
        assert admin.patch("/v1/products/sku", json={"price": 2, "tenant": tenant}).json()["changed"]
        feed = {"items": [{"product_id": "sku", "price": 3, "tenant": tenant}]}
        assert admin.post("/v1/products:update", json=feed).json()["updated"] == 1
        assert admin.get(f"/v1/images/{image_id}").json()["price"] == 3
        problem(admin.delete("/v1/products/sku"), 400)
        assert admin.delete("/v1/products/sku", params={"tenant": tenant}).json()["deleted_images"] == 1
