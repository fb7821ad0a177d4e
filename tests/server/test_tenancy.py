"""Keys bound to tenants: a request's key decides its tenant, another tenant's ids answer exactly
like missing ones, admin keys see every tenant, a revoked key fails at once, no key in the logs."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text

from imgsearch.access import keys
from tests.helpers import image_bytes, run_cli, unit
from tests.server.conftest import Api, problem

DIM = 32


def other_last(key: str) -> str:
    """``key`` with another last character: a well-formed key that isn't this one."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def body_without_request_id(response: httpx.Response) -> tuple[int, dict[str, object]]:
    body = dict(response.json())
    body.pop("request_id", None)
    return response.status_code, body


@pytest.fixture
def two_shops(api: Api) -> tuple[tuple[str, str, list[int]], tuple[str, str, list[int]]]:
    shops = []
    for name in ("acme", "globex"):
        tenant = f"{name}-{uuid.uuid4().hex[:8]}"
        key = api.key(tenant)
        with api.client(key) as client:
            items = [
                {
                    "embedding": unit(DIM, i).tolist(),
                    "product_id": "sku-1",
                    "category": f"{name}-only",
                    "price": 5,
                }
                for i in range(3)
            ]
            ids = client.post("/v1/images", json={"items": items}).json()["ids"]
            ids += client.post(
                "/v1/images", files={"file": ("a.png", image_bytes(9))}, data={"product_id": "pic"}
            ).json()["ids"]
        shops.append((tenant, key, ids))
    return shops[0], shops[1]


def test_each_key_sees_its_own_tenant_only(api: Api, two_shops) -> None:  # type: ignore[no-untyped-def]
    (acme, acme_key, acme_ids), (globex, globex_key, globex_ids) = two_shops
    with api.client(acme_key) as client:
        hits = client.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "k": 100}).json()["hits"]
        assert {h["image_id"] for h in hits} == set(acme_ids[:3])
        assert {h["tenant"] for h in hits} == {acme}
        assert [c["name"] for c in client.get("/v1/categories").json()["categories"]] == ["acme-only"]
        status = client.get("/v1/status").json()
        assert sum(status["counts"].values()) == 4 and "queue_depth" not in status
        for image_id in globex_ids:
            # another tenant's id answers exactly like an id that doesn't exist
            theirs = client.get(f"/v1/images/{image_id}")
            missing = client.get(f"/v1/images/{image_id + 10**9}")
            assert theirs.status_code == missing.status_code == 404
            assert body_without_request_id(theirs)[1]["detail"] == f"no image with id {image_id}"
            problem(client.get(f"/v1/images/{image_id}/thumbnail"), 404)
            problem(client.delete(f"/v1/images/{image_id}"), 404)
            found = problem(client.post("/v1/search", json={"similar_to": image_id}), 404)
            assert found["detail"] == f"no embedded image with id {image_id}"
        problem(client.post("/v1/images:delete", json={"ids": globex_ids}), 404)
        # the same product id in both shops: this key reaches its own
        assert client.patch("/v1/products/sku-1", json={"price": 6}).json()["changed"]
        body = client.post("/v1/search", json={"similar_to_product": "sku-1"}).json()
        assert all(h["tenant"] == acme for h in body["hits"])
        for method, path, payload in (
            ("POST", "/v1/search", {"vector": unit(DIM, 0).tolist(), "tenant": globex}),
            (
                "POST",
                "/v1/images",
                {"items": [{"embedding": unit(DIM, 0).tolist(), "product_id": "x", "tenant": globex}]},
            ),
            ("PATCH", "/v1/products/sku-1", {"price": 1, "tenant": globex}),
            (
                "POST",
                "/v1/products:update",
                {"items": [{"product_id": "sku-1", "price": 1, "tenant": globex}]},
            ),
        ):
            found = problem(client.request(method, path, json=payload), 403)
            assert globex not in found["detail"], "a refusal doesn't echo the other tenant"
        problem(client.delete("/v1/products/sku-1", params={"tenant": globex}), 403)
        problem(client.get("/v1/status", params={"tenant": globex}), 403)
    with api.client(globex_key) as client:
        for image_id in globex_ids:
            assert client.get(f"/v1/images/{image_id}").status_code == 200, "nothing of globex's changed"
        assert {client.get(f"/v1/images/{i}").json()["price"] for i in globex_ids[:3]} == {5.0}


def test_admin_keys_see_every_tenant(api: Api, two_shops) -> None:  # type: ignore[no-untyped-def]
    (acme, _, acme_ids), (globex, _, globex_ids) = two_shops
    with api.client(api.key(admin=True)) as admin:
        for image_id in acme_ids + globex_ids:
            assert admin.get(f"/v1/images/{image_id}").status_code == 200
        hits = admin.post(
            "/v1/search", json={"vector": unit(DIM, 0).tolist(), "k": 10, "tenant": globex}
        ).json()["hits"]
        assert {h["image_id"] for h in hits} == set(globex_ids[:3])
        everyone = admin.post("/v1/search", json={"vector": unit(DIM, 0).tolist(), "k": 1000}).json()["hits"]
        assert {acme, globex} <= {h["tenant"] for h in everyone}
        status = admin.get("/v1/status", params={"tenant": acme}).json()
        assert sum(status["counts"].values()) == 4 and "queue_depth" in status
        items = [{"embedding": unit(DIM, 5).tolist(), "product_id": "new", "tenant": acme}]
        (image_id,) = admin.post("/v1/images", json={"items": items}).json()["ids"]
        assert admin.get(f"/v1/images/{image_id}").json()["tenant"] == acme
        missing = admin.post(
            "/v1/images", json={"items": [{"embedding": unit(DIM, 5).tolist(), "product_id": "x"}]}
        )
        assert "tenant is required" in problem(missing, 400)["detail"]


def test_missing_bad_and_revoked_keys_are_401_at_once(api: Api, tenant: str) -> None:
    key = api.key(tenant)
    with httpx.Client(base_url=api.url) as anonymous:
        response = anonymous.get("/v1/status")
        assert problem(response, 401)["detail"].startswith("no API key")
        assert response.headers["www-authenticate"].startswith("Bearer")
        for header in (
            f"Basic {key}",
            "Bearer",
            f"Bearer {key}x",
            f"Bearer {other_last(key)}",
            "Bearer isk_x_y",
            "Bearer " + "x" * 10000,
        ):
            problem(anonymous.get("/v1/status", headers={"Authorization": header}), 401)
    with api.client(key) as client:
        for _ in range(3):  # verified, then served from memory
            assert client.get("/v1/status").status_code == 200
        keys.revoke_key(api.engine, key)
        assert (
            problem(client.get("/v1/status"), 401)["detail"] == "the API key is malformed, unknown or revoked"
        )
        assert problem(client.post("/v1/search", json={"text": "x"}), 401)
    second = api.key(tenant)
    key_id = keys.key_id_of(second)
    assert key_id is not None
    with api.client(second) as client:
        assert client.get("/v1/status").status_code == 200
        revoked = run_cli("tenant", "revoke-key", key_id, IMGSEARCH_DATABASE_URL=api.database_url)
        assert revoked.returncode == 0, revoked.stderr
        problem(client.get("/v1/status"), 401)


def test_keys_changed_by_hand_take_effect_at_once(api: Api, tenant: str) -> None:
    """A key deleted or revoked with plain SQL is refused by the very next request."""
    deleted, revoked, survivor = api.key(tenant), api.key(tenant), api.key(tenant)
    with api.client(deleted) as one, api.client(revoked) as two, api.client(survivor) as three:
        for client in (one, two, three):
            assert client.get("/v1/status").status_code == 200
        with api.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM imgsearch.api_keys WHERE key_id = :id"), {"id": keys.key_id_of(deleted)}
            )
            conn.execute(
                text("UPDATE imgsearch.api_keys SET revoked_at = now() WHERE key_id = :id"),
                {"id": keys.key_id_of(revoked)},
            )
        problem(one.get("/v1/status"), 401)
        problem(two.get("/v1/status"), 401)
        assert three.get("/v1/status").status_code == 200


def test_keys_never_reach_the_logs(api: Api, tenant: str) -> None:
    key = api.key(tenant)
    bad = other_last(key)
    with api.client(key) as client:
        client.post("/v1/search", json={"text": "what", "k": 2})
        client.get("/v1/images/1")
        client.post("/v1/search", json={"vector": [1.0]})
    with api.client(bad) as client:
        client.get("/v1/status")
    with httpx.Client(base_url=api.url) as client:
        client.get("/v1/status", headers={"Authorization": f"Token {key}"})
    log = api.log_text()
    secret = key.split("_", 2)[2]
    assert secret not in log and bad.split("_", 2)[2] not in log
    assert key not in log and "Authorization" not in log and "authorization" not in log
    assert keys.key_id_of(key) in log, "the key's public id is logged, to tell keys apart"
