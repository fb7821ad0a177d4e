"""``/v1/events`` over real HTTP: a search's ``query_id``, events on its hits, refused ones each
with its index, tenants kept apart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch import Catalog
from imgsearch.settings import Settings
from tests.server.conftest import Api, problem


def _shop(api: Api, tiny_siglip: Path, tenant: str) -> list[float]:
    rng = np.random.default_rng(3)
    with Catalog.open(api.database_url, settings=Settings(model=str(tiny_siglip), device="cpu")) as catalog:
        rows = [
            {"tenant": tenant, "product_id": f"sku-{i}", "embedding": rng.standard_normal(catalog.dim)}
            for i in range(12)
        ]
        catalog.add_many(rows)
        return [float(x) for x in rng.standard_normal(catalog.dim)]


def _search(client: Any, vector: list[float], **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"vector": vector, "k": 5, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_search_answers_its_query_id_and_its_events_are_recorded(api: Api, tiny_siglip: Path, tenant: str) -> None:
    vector = _shop(api, tiny_siglip, tenant)
    with api.client(api.key(tenant)) as client:
        found = _search(client, vector, client_id="browser-1")
        assert str(uuid.UUID(found["query_id"])) == found["query_id"]
        hits = found["hits"]
        events = [
            {"query_id": found["query_id"], "action": "impression", "object_id": hits[0]["product_id"], "position": 1},
            {"query_id": found["query_id"], "action": "click", "object_id": hits[2]["image_id"], "position": 3,
             "event_id": "ev-1"},
            {"query_id": found["query_id"], "action": "purchase", "object_id": hits[2]["product_id"], "position": 3,
             "time": "2099-01-01T00:00:00+00:00"},
        ]  # fmt: skip
        refused = problem(client.post("/v1/events", json={"events": events}), 400)
        assert refused["type"] == "/problems/invalid-events"
        assert refused["errors"] == [{"index": 2, "error": refused["errors"][0]["error"]}]
        assert "future" in refused["errors"][0]["error"]
        del events[2]["time"]
        response = client.post("/v1/events", json={"events": events})
        assert response.status_code == 200, response.text
        assert response.json() == {"recorded": 3, "duplicates": 0}
        again = client.post("/v1/events", json={"events": events[1:2]})
        assert again.json() == {"recorded": 0, "duplicates": 1}
        off = _search(client, vector, boost=False)
        assert all("boost" not in hit for hit in off["hits"]) and off["query_id"] != found["query_id"]


def test_each_bad_event_is_named_by_its_index(api: Api, tiny_siglip: Path, tenant: str) -> None:
    vector = _shop(api, tiny_siglip, tenant)
    with api.client(api.key(tenant)) as client:
        found = _search(client, vector)
        good = {"query_id": found["query_id"], "action": "click", "object_id": found["hits"][0]["product_id"],
                "position": 1}  # fmt: skip
        events = [good, {**good, "position": 6}, good, {**good, "query_id": str(uuid.uuid4())}]
        refused = problem(client.post("/v1/events", json={"events": events}), 400)
        assert [e["index"] for e in refused["errors"]] == [1, 3]
        assert "positions 1 to 5" in refused["errors"][0]["error"]
        # shapes the schema refuses: 422, each with its location
        bad = problem(client.post("/v1/events", json={"events": [{**good, "action": "like"}]}), 422)
        assert "events" in bad["errors"][0]["location"] and "action" in bad["errors"][0]["location"]
        assert bad["index"] == 0
        assert "must not be empty" in problem(client.post("/v1/events", json={"events": []}), 400)["detail"]


def test_a_tenant_cannot_record_events_on_another_tenants_search(api: Api, tiny_siglip: Path, tenant: str) -> None:
    vector = _shop(api, tiny_siglip, tenant)
    with api.client(api.key(tenant)) as client:
        found = _search(client, vector)
    event = {"query_id": found["query_id"], "action": "click", "object_id": found["hits"][0]["product_id"],
             "position": 1}  # fmt: skip
    with api.client(api.key(f"{tenant}-other")) as other:
        refused = problem(other.post("/v1/events", json={"events": [event]}), 404)  # as a missing one
        assert "no search has query_id" in refused["errors"][0]["error"]
    with api.client(api.key(admin=True)) as admin:
        assert admin.post("/v1/events", json={"events": [event]}).json() == {"recorded": 1, "duplicates": 0}


def test_a_search_takes_the_boost_and_adapter_flags(api: Api, tiny_siglip: Path, tenant: str) -> None:
    vector = _shop(api, tiny_siglip, tenant)
    with api.client(api.key(tenant)) as client:
        plain = _search(client, vector)
        same = _search(client, vector, adapter=True, boost=True)  # the tenant has neither: the same hits
        assert [h["image_id"] for h in same["hits"]] == [h["image_id"] for h in plain["hits"]]
        assert _search(client, vector, adapter=None)["hits"]
        problem(client.post("/v1/search", json={"vector": vector, "adapter": "yes"}), 422)
        problem(client.post("/v1/search", json={"vector": vector, "boost": None}), 422)
