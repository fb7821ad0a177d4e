"""Bad and hostile requests get a problem (RFC 9457) with the right status and the library's
message, never a traceback; bodies over the limit are refused; a database that goes away answers
503 with Retry-After, and the service recovers by itself."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image as PILImage
from sqlalchemy import make_url, text

from tests.conftest import new_database
from tests.helpers import nested, unit
from tests.server.conftest import MAX_BATCH_ITEMS, MAX_IMAGE_BYTES, Api, problem, start_api

DIM = 32
VECTOR = unit(DIM, 1).tolist()
INJECTION = "'; DROP TABLE imgsearch.images; --"

SEARCHES: list[tuple[Any, int, str]] = [
    ({}, 400, "give exactly one query"),
    ({"text": "a", "vector": VECTOR}, 400, "give exactly one query"),
    ({"text": ""}, 400, "non-empty string"),
    ({"text": "x" * 2001}, 400, "the limit is 2000"),
    ({"text": 5}, 422, "text: Input should be a valid string"),
    ({"text": "bad \ud800 surrogate"}, 422, "not valid JSON"),  # a lone surrogate: no Unicode text
    ({"vector": []}, 400, "0 dimensions, expected 32"),
    ({"vector": [0.1] * 33}, 400, "33 dimensions, expected 32"),
    ({"vector": [0.0] * DIM}, 400, "zero"),
    ({"vector": ["0.1"] * DIM}, 422, "vector[0]: Input should be a valid number"),
    ({"vector": [True] * DIM}, 422, "vector[0]: Input should be a valid number"),
    ({"vector": [[0.1]] * DIM}, 422, "vector[0]"),
    ({"vector": "0.1, 0.2"}, 422, "vector"),
    ({"vector": VECTOR, "k": 0}, 400, "k must be an integer from 1 to 1000"),
    ({"vector": VECTOR, "k": 1001}, 400, "k must be an integer from 1 to 1000"),
    ({"vector": VECTOR, "k": 2**40}, 400, "k must be an integer from 1 to 1000"),
    ({"vector": VECTOR, "k": "10"}, 422, "k: Input should be a valid integer"),
    ({"vector": VECTOR, "k": 1.5}, 422, "k: Input should be a valid integer"),
    ({"vector": VECTOR, "offset": -1}, 400, "offset must be"),
    ({"vector": VECTOR, "price_min": "NaN"}, 400, "price_min must be finite"),
    ({"vector": VECTOR, "price_min": "cheap"}, 400, "price_min must be a number"),
    ({"vector": VECTOR, "price_min": 5, "price_max": 1}, 400, "above price_max"),
    ({"vector": VECTOR, "category": []}, 400, "non-empty list"),
    ({"vector": VECTOR, "category": ""}, 400, "category must not be empty"),
    ({"vector": VECTOR, "category": "a\x00b"}, 400, "control characters"),
    ({"vector": VECTOR, "category": {"$ne": 1}}, 422, "category"),
    ({"vector": VECTOR, "attributes": ["red"]}, 422, "attributes"),
    ({"vector": VECTOR, "attributes": {"a": nested(40)}}, 400, "deeper than 32"),
    ({"vector": VECTOR, "diversity": 2}, 400, "diversity must be"),
    ({"vector": VECTOR, "expand": 0}, 400, "expand must be"),
    ({"vector": VECTOR, "min_score": 5}, 400, "min_score must be"),
    ({"vector": VECTOR, "group_by_product": "yes"}, 422, "group_by_product"),
    ({"vector": VECTOR, "where": "1=1"}, 422, "where: Extra inputs are not permitted"),
    ({"similar_to": "12"}, 422, "similar_to: Input should be a valid integer"),
    ({"similar_to": -5}, 404, "no embedded image with id -5"),
    ({"similar_to_product": INJECTION}, 404, "has no product"),
    ({"image_url": "/etc/passwd"}, 400, "must be http:// or https://"),
    ({"image_url": "http://169.254.169.254/latest/meta-data"}, 400, "not a public address"),
    ([1, 2], 422, "body: Input should be an object"),
]


@pytest.mark.parametrize(("body", "status", "message"), SEARCHES, ids=[repr(s[0])[:60] for s in SEARCHES])
def test_bad_searches(api: Api, tenant: str, body: Any, status: int, message: str) -> None:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON that no UTF-8 encoder would send
    payload = json.dumps(body)
    with api.client(api.key(tenant)) as client:
        found = problem(
            client.post("/v1/search", content=payload, headers={"content-type": "application/json"}), status
        )
    assert message in found["detail"], found


def test_nan_and_infinity_in_json(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        for literal in ("NaN", "Infinity", "-Infinity"):
            body = "{" + f'"vector": [{literal}' + ", 0.5" * (DIM - 1) + "]}"
            response = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
            assert "only finite numbers" in problem(response, 400)["detail"]
            item = '{"items": [{"product_id": "p", "embedding": [' + ", ".join([literal] * DIM) + "]}]}"
            response = client.post("/v1/images", content=item, headers={"content-type": "application/json"})
            assert problem(response, 400)["index"] == 0
        response = client.post("/v1/search", content="{nope", headers={"content-type": "application/json"})
        assert problem(response, 422)["errors"][0]["location"] == "body"


def test_injection_strings_are_data(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        response = client.post(
            "/v1/images",
            json={
                "items": [
                    {
                        "embedding": VECTOR,
                        "product_id": INJECTION,
                        "category": INJECTION,
                        "attributes": {INJECTION: INJECTION},
                    }
                ]
            },
        )
        assert response.status_code == 201, response.text
        hits = client.post(
            "/v1/search", json={"vector": VECTOR, "category": INJECTION, "attributes": {INJECTION: INJECTION}}
        ).json()["hits"]
        assert [(h["product_id"], h["category"]) for h in hits] == [(INJECTION, INJECTION)]
    with api.engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('imgsearch.images')")).scalar() == "imgsearch.images"


def test_bodies_over_the_limit_are_refused(api: Api, tenant: str) -> None:
    limit = MAX_IMAGE_BYTES + 1024 * 1024
    with api.client(api.key(tenant)) as client:
        body = problem(
            client.post(
                "/v1/images", files={"file": ("big.bin", b"\0" * (limit + 10))}, data={"product_id": "p"}
            ),
            413,
        )
        assert str(limit) in body["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(limit // 65536 + 2):
                yield b"x" * 65536

        response = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert "over the" in problem(response, 413)["detail"]
        # within the body limit, over the image limit: the library's error
        large = client.post(
            "/v1/images",
            files={"file": ("big.png", b"\x89PNG" + b"\0" * MAX_IMAGE_BYTES)},
            data={"product_id": "p"},
        )
        assert "over the 1000000-byte limit" in problem(large, 400)["detail"]
        items = [{"embedding": VECTOR, "product_id": f"p{i}"} for i in range(MAX_BATCH_ITEMS + 1)]
        body = problem(client.post("/v1/images", json={"items": items}), 413)
        assert f"the limit is {MAX_BATCH_ITEMS}" in body["detail"]
        problem(client.post("/v1/images:delete", json={"ids": list(range(1, MAX_BATCH_ITEMS + 2))}), 413)
        feed = [{"product_id": f"p{i}", "price": 1} for i in range(MAX_BATCH_ITEMS + 1)]
        problem(client.post("/v1/products:update", json={"items": feed}), 413)
        problem(client.post("/v1/images", json={"items": []}), 400)


def test_routes_and_methods_that_dont_exist(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        assert "no route" in problem(client.get("/v1/nothing"), 404)["detail"]
        response = client.put("/v1/search", json={})
        problem(response, 405)
        assert "POST" in response.headers["allow"]
        problem(client.get("/v1/images/abc"), 422)
        problem(client.get("/v1/images/1.5"), 422)
        problem(client.get(f"/v1/images/{2**70}"), 404)


@pytest.fixture
def fragile(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> Iterator[tuple[Api, str]]:
    """A server on a database of its own, which the test can cut off."""
    database_url = new_database(server_url, template_db)
    api = start_api(database_url, tiny_siglip, tmp_path)
    try:
        yield api, make_url(database_url).database or ""
    finally:
        api.stop()


def _admin(server_url: str) -> psycopg.Connection[Any]:
    url = make_url(server_url)
    return psycopg.connect(host=url.query["host"], user="postgres", dbname="postgres", autocommit=True)


def test_a_database_that_goes_away_answers_503_then_recovers(
    fragile: tuple[Api, str], server_url: str, tenant: str
) -> None:
    api, name = fragile
    key = api.key(tenant)
    with api.client(key) as client:
        (image_id,) = client.post(
            "/v1/images", json={"items": [{"embedding": VECTOR, "product_id": "p"}]}
        ).json()["ids"]
        assert client.post("/v1/search", json={"vector": VECTOR}).status_code == 200
        with _admin(server_url) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            try:
                for method, path, body in (
                    ("POST", "/v1/search", {"vector": VECTOR}),
                    ("GET", f"/v1/images/{image_id}", None),
                    ("POST", "/v1/images", {"items": [{"embedding": VECTOR, "product_id": "q"}]}),
                    ("GET", "/v1/status", None),
                ):
                    response = client.request(method, path, json=body)
                    found = problem(response, 503)
                    assert response.headers["retry-after"].isdigit(), path
                    assert (
                        "not currently accepting connections" in found["detail"]
                        or "database" in found["detail"]
                    )
                ready = httpx.get(f"{api.url}/readyz")
                assert "database: unreachable" in problem(ready, 503)["detail"]
                assert httpx.get(f"{api.url}/healthz").status_code == 200, "alive while the database is away"
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        hits = client.post("/v1/search", json={"vector": VECTOR}).json()["hits"]
        assert [h["image_id"] for h in hits] == [image_id], "searches recover without a restart"
        assert client.get(f"/v1/images/{image_id}").status_code == 200
        assert httpx.get(f"{api.url}/readyz").status_code == 200


def test_a_request_waiting_on_a_lock_answers_503_instead_of_hanging(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path, tenant: str
) -> None:
    database_url = new_database(server_url, template_db)
    api = start_api(database_url, tiny_siglip, tmp_path, IMGSEARCH_LOCK_TIMEOUT_MS="500")
    try:
        with api.client(api.key(tenant)) as client:
            (image_id,) = client.post(
                "/v1/images", json={"items": [{"embedding": VECTOR, "product_id": "p"}]}
            ).json()["ids"]
            url = make_url(database_url)
            with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as holder:
                # what a migration's ALTER TABLE holds while it runs
                holder.execute("LOCK TABLE imgsearch.images IN ACCESS EXCLUSIVE MODE")
                # searches read embeddings and products only: they go on
                hits = client.post("/v1/search", json={"vector": VECTOR}).json()["hits"]
                assert [h["image_id"] for h in hits] == [image_id]
                for method, path, body in (
                    ("POST", "/v1/images", {"items": [{"embedding": VECTOR, "product_id": "q"}]}),
                    ("GET", f"/v1/images/{image_id}", None),
                ):
                    started = time.monotonic()
                    response = client.request(method, path, json=body)
                    assert time.monotonic() - started < 5, "answered after the lock timeout, not the lock"
                    found = problem(response, 503)
                    assert response.headers["retry-after"].isdigit()
                    assert "lock" in found["detail"], found["detail"]
                holder.rollback()
            hits = client.post("/v1/search", json={"vector": VECTOR}).json()["hits"]
            assert [h["image_id"] for h in hits] == [image_id]
            # the refused upload wrote nothing
            assert client.get("/v1/status").json()["counts"]["ready"] == 1
    finally:
        api.stop()


def test_a_client_gone_while_its_body_is_read_is_logged_as_that(api: Api, tenant: str) -> None:
    """Not an "unexpected error" with a traceback and a 500: one line saying what happened."""
    request_id = f"gone-{tenant}"
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v1/search HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {api.key(tenant)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 1000\r\nX-Request-ID: {request_id}\r\n\r\n"
                '{"text": "half a bo'
            ).encode()
        )
        time.sleep(0.5)  # the route is reading the body
    deadline = time.monotonic() + 10
    # both lines: the route's, then the access log's once the response is done (written apart)
    while api.log_text().count(request_id) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [json.loads(line) for line in api.log_text().splitlines() if request_id in line]
    assert [line["message"] for line in lines] == [
        "client disconnected before its request was read",
        "request",
    ], lines
    assert lines[1]["status"] == 499
    assert all("error" not in line and line["level"] == "info" for line in lines)
    assert "unexpected error" not in api.log_text()


def test_inputs_a_new_user_tripped_on_are_400s_naming_them(api: Api, tenant: str) -> None:
    banner = io.BytesIO()
    PILImage.new("RGB", (4000, 100)).save(banner, "PNG")
    with api.client(api.key(tenant)) as client:
        body = problem(
            client.post("/v1/images", files={"file": ("b.png", banner.getvalue())}, data={"product_id": "p"}),
            400,
        )
        assert "aspect ratio of 40:1, beyond the 20:1 limit" in body["detail"]  # not a worker failure later
        response = client.post("/v1/search", json={"image_url": "https://no-such-host.invalid/shoe.jpg"})
        body = problem(response, 400)  # not a 503 that invites a retry
        assert "query image URL" in body["detail"] and "doesn't resolve" in body["detail"]
        assert "Retry-After" not in response.headers


def test_timestamps_parse_as_instants(api: Api, tenant: str) -> None:
    """UTC with Z, as Java's Instant.parse (before Java 12) requires: never +00:00."""
    with api.client(api.key(tenant)) as client:
        (image_id,) = client.post(
            "/v1/images", json={"items": [{"embedding": VECTOR, "product_id": "p"}]}
        ).json()["ids"]
        image = client.get(f"/v1/images/{image_id}").json()
    for name in ("created_at", "updated_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", image[name]), image[name]
        parsed = dt.datetime.fromisoformat(image[name])
        assert parsed.utcoffset() == dt.timedelta(0) and abs(dt.datetime.now(dt.UTC) - parsed) < dt.timedelta(
            minutes=5
        )


def test_a_405_lists_every_method_of_its_path_and_head_answers_get_routes(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        (image_id,) = client.post(
            "/v1/images", json={"items": [{"embedding": VECTOR, "product_id": "p"}]}
        ).json()["ids"]
        for method, path, allowed in [
            ("PUT", f"/v1/images/{image_id}", "DELETE, GET, HEAD"),
            ("POST", "/v1/products/p", "DELETE, PATCH"),
            ("GET", "/v1/search", "POST"),
            ("DELETE", "/healthz", "GET, HEAD"),
        ]:
            response = client.request(method, path)
            problem(response, 405)
            assert response.headers["allow"] == allowed, (method, path)
        for path in (f"/v1/images/{image_id}", "/v1/categories", "/healthz", "/v1/status"):
            head, get = client.head(path), client.get(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
        assert client.head("/v1/images/999999999").status_code == 404


@pytest.mark.parametrize("media_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_json_routes_answer_another_content_type_with_415(api: Api, tenant: str, media_type: str) -> None:
    """What PHP's curl and Node's fetch send by default: a 415 on every JSON route, not a 422."""
    with api.client(api.key(tenant)) as client:
        client.post("/v1/images", json={"items": [{"embedding": VECTOR, "product_id": "p"}]})
        for method, path, body in [
            ("PATCH", "/v1/products/p", {"price": 3}),
            ("POST", "/v1/products:update", {"items": [{"product_id": "p", "price": 3}]}),
            ("POST", "/v1/images:delete", {"ids": [1]}),
            ("POST", "/v1/search", {"text": "shoe"}),
            ("POST", "/v1/images", {"items": [{"embedding": VECTOR, "product_id": "q"}]}),
        ]:
            response = client.request(
                method, path, content=json.dumps(body), headers={"content-type": media_type}
            )
            assert "application/json" in problem(response, 415)["detail"], (method, path)


def test_a_body_without_a_content_type_is_read_as_json_everywhere(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:

        def send(method: str, path: str, body: Any) -> httpx.Response:
            request = client.build_request(method, path, content=json.dumps(body))
            assert "content-type" not in request.headers  # httpx sets none for raw content
            return client.send(request)

        uploaded = send("POST", "/v1/images", {"items": [{"embedding": VECTOR, "product_id": "p"}]})
        assert uploaded.status_code == 201, uploaded.text
        (image_id,) = uploaded.json()["ids"]
        assert send("PATCH", "/v1/products/p", {"price": 3}).json() == {"product_id": "p", "changed": True}
        feed = send("POST", "/v1/products:update", {"items": [{"product_id": "p", "price": 4}]})
        assert feed.json() == {"updated": 1, "unchanged": 0}
        hits = send("POST", "/v1/search", {"vector": VECTOR, "k": 1.0}).json()["hits"]  # 1.0: an integer
        assert [hit["image_id"] for hit in hits] == [image_id]
        deleted = send("POST", "/v1/images:delete", {"ids": [float(image_id)]})
        assert deleted.status_code == 200, deleted.text
        problem(send("POST", "/v1/search", {"vector": VECTOR, "k": 1.5}), 422)


def test_an_unknown_query_parameter_is_a_400_naming_it(api: Api, tenant: str) -> None:
    """A typo in a query parameter would be ignored, and the request do what it wasn't asked to."""
    picture = io.BytesIO()
    PILImage.new("RGB", (40, 30), "red").save(picture, "PNG")
    with api.client(api.key(tenant)) as client:
        typo = client.post(
            "/v1/images?on_duplicat=reject",
            files={"file": ("a.png", picture.getvalue())},
            data={"product_id": "p"},
        )
        assert problem(typo, 400)["detail"] == (
            "unknown query parameters ['on_duplicat'] for POST /v1/images: it takes ['on_duplicate']"
        )
        assert client.get("/v1/status").json()["counts"] == {
            "pending": 0,
            "embedding": 0,
            "ready": 0,
            "failed": 0,
        }
        search = problem(client.post("/v1/search?k=5", json={"text": "red"}), 400)["detail"]
        assert search == "unknown query parameters ['k'] for POST /v1/search: it takes none"
        assert problem(client.get("/healthz?probe=1"), 400)["detail"].startswith(
            "unknown query parameters ['probe']"
        )
        assert client.get("/v1/images/999999/thumbnail?size=64").status_code == 404  # one it takes
        assert client.get("/v1/categories?limit=3").status_code == 200
