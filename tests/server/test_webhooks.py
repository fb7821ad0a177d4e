"""``/v1/webhooks`` over real HTTP: a tenant's key adds an endpoint and gets its secret once,
lists, rotates, replays and removes its own alone; bad endpoints get clear problems."""

from __future__ import annotations

import uuid

from tests.server.conftest import Api, problem


def test_a_tenant_adds_lists_rotates_and_removes_its_endpoints(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        added = client.post("/v1/webhooks", json={"url": "https://hooks.example.com/in", "events": ["image.ready"]})
        assert added.status_code == 201, added.text
        endpoint, secret = added.json()["id"], added.json()["secret"]
        assert secret.startswith("whsec_")
        listed = client.get("/v1/webhooks").json()["endpoints"]
        assert [(e["id"], e["url"], e["events"], e["pending"]) for e in listed] == [
            (endpoint, "https://hooks.example.com/in", ["image.ready"], 0)
        ]
        assert secret not in client.get("/v1/webhooks").text  # shown once, never listed
        rotated = client.post(f"/v1/webhooks/{endpoint}/rotate-secret")
        assert rotated.status_code == 200 and rotated.json()["secret"] not in (secret, None)
        replayed = client.post("/v1/webhooks:replay", json={"since": "2026-01-01T00:00:00Z"})
        assert replayed.status_code == 200 and replayed.json() == {"queued": 0}
        with api.client(api.key(f"other-{uuid.uuid4().hex[:6]}")) as other:
            problem(other.delete(f"/v1/webhooks/{endpoint}"), 404)  # another tenant's: not found
            assert other.get("/v1/webhooks").json() == {"endpoints": []}
        assert client.delete(f"/v1/webhooks/{endpoint}").status_code == 204
        assert client.get("/v1/webhooks").json() == {"endpoints": []}
        problem(client.delete(f"/v1/webhooks/{endpoint}"), 404)


def test_bad_endpoints_get_problems_naming_what_is_wrong(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        for body, words in (
            ({"url": "http://169.254.169.254/latest"}, "not at a public address"),
            ({"url": "ftp://example.com/"}, "http(s) URL"),
            ({"url": "https://example.com/", "events": ["image.gone"]}, "unknown event type"),
            ({"url": "https://example.com/", "tenant": "someone-else"}, "its own tenant only"),
        ):
            response = client.post("/v1/webhooks", json=body)
            assert response.status_code in (400, 403), response.text
            assert words in response.json()["detail"], response.text
        problem(client.post("/v1/webhooks", json={"events": ["image.ready"]}), 422)
        late = {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
        assert "must come before" in problem(client.post("/v1/webhooks:replay", json=late), 400)["detail"]
        assert client.get("/v1/webhooks").json() == {"endpoints": []}
    with api.client(api.key(admin=True)) as admin:
        detail = problem(admin.post("/v1/webhooks", json={"url": "https://example.com/"}), 400)["detail"]
        assert "names the tenant" in detail
        added = admin.post("/v1/webhooks", json={"url": "https://example.com/a", "tenant": tenant})
        assert added.status_code == 201
        assert [e["tenant"] for e in admin.get("/v1/webhooks", params={"tenant": tenant}).json()["endpoints"]] == [tenant]
