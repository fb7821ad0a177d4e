"""``/v1/images`` over real HTTP: uploads (JSON vectors and URLs, multipart files) through to
``ready`` by a real Celery worker, an image's state and error, thumbnails, deletes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from tests.helpers import Workers, image_bytes, serve_files, unit, wait_until
from tests.server.conftest import Api, problem

DIM = 32  # the tiny model's


def vectors(n: int, seed: int = 0) -> list[list[float]]:
    return [unit(DIM, seed * 1000 + i).tolist() for i in range(n)]


def image_ids(api: Api, tenant: str) -> set[int]:
    with api.engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM imgsearch.images WHERE tenant = :t"), {"t": tenant})
        return set(rows.scalars())


def test_json_vectors_are_stored_ready_in_order(api: Api, tenant: str) -> None:
    items = [
        {"embedding": v, "product_id": f"sku-{i}", "category": "mugs", "price": 9.5 + i, "currency": "eur"}
        for i, v in enumerate(vectors(5))
    ]
    with api.client(api.key(tenant)) as client:
        response = client.post("/v1/images", json={"items": items})
        assert response.status_code == 201, response.text
        ids = response.json()["ids"]
        assert len(ids) == 5 and ids == sorted(ids)
        for i, image_id in enumerate(ids):
            image = client.get(f"/v1/images/{image_id}").json()
            assert image["id"] == image_id
            assert image["state"] == "ready" and image["error"] is None and image["has_embedding"]
            assert (image["product_id"], image["price"], image["currency"]) == (f"sku-{i}", 9.5 + i, "EUR")
            assert image["tenant"] == tenant


def test_a_bad_item_fails_the_whole_batch_naming_its_index(api: Api, tenant: str) -> None:
    good = {"embedding": vectors(1)[0], "product_id": "ok"}
    with api.client(api.key(tenant)) as client:
        response = client.post(
            "/v1/images", json={"items": [good, good | {"product_id": "wrong", "embedding": [1.0, 2.0]}]}
        )
        body = problem(response, 400)
        assert body["index"] == 1
        assert "row 1" in body["detail"] and "2 dimensions, expected 32" in body["detail"]
        response = client.post("/v1/images", json={"items": [good, {"product_id": "x", "price": "lots"}]})
        assert problem(response, 400)["index"] == 1
        response = client.post("/v1/images", json={"items": [good, {"product_id": "x", "embedding": "no"}]})
        body = problem(response, 422)
        assert body["index"] == 1 and body["errors"][0]["location"] == "items[1].embedding"
    assert image_ids(api, tenant) == set(), "nothing of a failed batch is stored"


def test_vectors_of_any_scale_are_stored_and_found_and_zeros_are_a_400(api: Api, tenant: str) -> None:
    """A vector of huge finite values used to overflow its norm: stored as zeros with a 201, it
    made every later search of the tenant a 500 (NaN distances). Tiny ones were refused."""
    huge, tiny = [1e300] * DIM, [1e-300] * DIM
    items = [{"embedding": huge, "product_id": "huge"}, {"embedding": tiny, "product_id": "tiny"}]
    items += [{"embedding": v, "product_id": f"sku-{i}"} for i, v in enumerate(vectors(3, seed=9))]
    with api.client(api.key(tenant)) as client:
        assert client.post("/v1/images", json={"items": items}).status_code == 201
        for query in (huge, tiny, [-1e300] + [1e300] * (DIM - 1)):
            response = client.post("/v1/search", json={"vector": query, "k": 5})
            assert response.status_code == 200, response.text
            hits = response.json()["hits"]
            assert len(hits) == 5 and all(np.isfinite([h["distance"], h["score"]]).all() for h in hits)
        top = client.post("/v1/search", json={"vector": huge, "k": 1}).json()["hits"][0]
        assert top["product_id"] in ("huge", "tiny") and top["distance"] < 1e-3  # the same direction
        zero = {"embedding": [0.0] * DIM, "product_id": "zero"}
        body = problem(client.post("/v1/images", json={"items": [zero]}), 400)
        assert "all zeros" in body["detail"]
        body = problem(client.post("/v1/search", json={"vector": [0.0] * DIM}), 400)
        assert "query vector is all zeros" in body["detail"]


def test_the_same_bytes_again_answer_the_stored_image(api: Api, tenant: str) -> None:
    picture = image_bytes(7)
    with api.client(api.key(tenant)) as client:
        first = client.post("/v1/images", files={"file": ("a.png", picture)}, data={"product_id": "p"})
        again = client.post("/v1/images", files={"file": ("b.png", picture)}, data={"product_id": "p"})
    assert first.status_code == again.status_code == 201
    assert first.json()["ids"] == again.json()["ids"]


def test_uploads_by_file_and_url_become_ready_through_a_real_worker(
    api: Api, tenant: str, tmp_path: Path, tiny_siglip: Path
) -> None:
    """Multipart files and image URLs are committed as pending, woken workers embed them, a URL
    that answers 404 fails alone with its error, and searches find the new images."""
    (tmp_path / "served").mkdir()
    for i in range(3):
        (tmp_path / "served" / f"u{i}.png").write_bytes(image_bytes(100 + i, size=(64, 48)))
    key = api.key(tenant)
    with serve_files(tmp_path / "served") as images, api.client(key) as client:
        files = [("file", (f"f{i}.png", image_bytes(200 + i), "image/png")) for i in range(4)]
        form = {
            "product_id": "sku-files",
            "category": "shoes",
            "price": "19.90",
            "attributes": '{"color": "red"}',
        }
        uploaded = client.post("/v1/images", files=files, data=form)
        assert uploaded.status_code == 201, uploaded.text
        file_ids = uploaded.json()["ids"]
        items = [{"url": f"{images.url}/u{i}.png", "product_id": f"sku-url-{i}"} for i in range(3)]
        items.append({"url": f"{images.url}/missing.png", "product_id": "sku-missing"})
        uploaded = client.post("/v1/images", json={"items": items})
        assert uploaded.status_code == 201, uploaded.text
        url_ids = uploaded.json()["ids"]
        states = {i: client.get(f"/v1/images/{i}").json()["state"] for i in file_ids + url_ids}
        assert set(states.values()) == {"pending"}, "committed before any worker ran"

        env = {**api.env, "IMGSEARCH_SWEEP_SECONDS": "1", "TMPDIR": str(tmp_path)}
        workers = Workers(env, tmp_path)
        workers.start()
        try:

            def settled() -> bool:
                return all(
                    client.get(f"/v1/images/{i}").json()["state"] in ("ready", "failed")
                    for i in file_ids + url_ids
                )

            wait_until(settled, 180, workers, "every upload embedded or failed")
        finally:
            workers.stop_all()
        records = {i: client.get(f"/v1/images/{i}").json() for i in file_ids + url_ids}
        missing = records.pop(url_ids[-1])
        assert missing["state"] == "failed" and "HTTP 404" in missing["error"]
        assert {r["state"] for r in records.values()} == {"ready"}
        first = records[file_ids[0]]
        assert (first["product_id"], first["category"], first["price"]) == ("sku-files", "shoes", 19.9)
        assert first["attributes"] == {"color": "red"} and first["format"] == "PNG"
        assert records[url_ids[0]]["uri"] == f"{images.url}/u0.png"
        hits = client.post("/v1/search", json={"similar_to": url_ids[0], "k": 10}).json()["hits"]
        assert {h["image_id"] for h in hits} == set(file_ids + url_ids[1:3])
        status = client.get("/v1/status").json()
        assert status["counts"]["ready"] == 7 and status["counts"]["failed"] == 1
        assert [f["image_id"] for f in status["failed"]] == [url_ids[-1]]


def test_multipart_checks(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        no_file = client.post("/v1/images", data={"product_id": "p"}, files={"other": ("x", b"1")})
        assert "unknown form fields ['other']" in problem(no_file, 400)["detail"]
        response = client.post("/v1/images", data={"product_id": "p"}, files={"file": ("x.txt", b"hello")})
        body = problem(response, 400)
        assert body["index"] == 0 and "not a recognised image format" in body["detail"]
        response = client.post(
            "/v1/images",
            data={"product_id": "p", "attributes": "{oops"},
            files={"file": ("a.png", image_bytes(1))},
        )
        assert "attributes must be a JSON object" in problem(response, 400)["detail"]
        response = client.post("/v1/images", files={"file": ("a.png", image_bytes(1))})
        assert "product_id is required" in problem(response, 400)["detail"]
        response = client.post("/v1/images", content=b"x", headers={"content-type": "text/plain"})
        assert problem(response, 415)["status"] == 415
    assert image_ids(api, tenant) == set()


def test_get_and_delete(api: Api, tenant: str) -> None:
    with api.client(api.key(tenant)) as client:
        ids = client.post(
            "/v1/images",
            json={"items": [{"embedding": v, "product_id": f"p{i}"} for i, v in enumerate(vectors(4))]},
        ).json()["ids"]
        assert client.delete(f"/v1/images/{ids[0]}").status_code == 204
        assert "no image with id" in problem(client.get(f"/v1/images/{ids[0]}"), 404)["detail"]
        assert problem(client.delete(f"/v1/images/{ids[0]}"), 404)
        response = client.post("/v1/images:delete", json={"ids": [ids[1], ids[0]]})
        assert problem(response, 404)
        assert client.get(f"/v1/images/{ids[1]}").status_code == 200, "all or nothing: none deleted"
        response = client.post("/v1/images:delete", json={"ids": ids[1:]})
        assert response.status_code == 200 and response.json() == {"deleted": 3}
    assert image_ids(api, tenant) == set()


def test_thumbnails_are_bounded_jpegs_with_etags(api: Api, tenant: str) -> None:
    picture = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(
        picture, "JPEG", quality=70
    )
    with api.client(api.key(tenant)) as client:
        (image_id,) = client.post(
            "/v1/images", files={"file": ("big.jpg", picture.getvalue())}, data={"product_id": "p"}
        ).json()["ids"]
        response = client.get(f"/v1/images/{image_id}/thumbnail", params={"size": 128})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(response.content))
        assert thumb.format == "JPEG" and max(thumb.size) == 128 and thumb.size == (128, 96)
        etag = response.headers["etag"]
        assert "private" in response.headers["cache-control"]
        again = client.get(
            f"/v1/images/{image_id}/thumbnail", params={"size": 128}, headers={"If-None-Match": etag}
        )
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        other_size = client.get(
            f"/v1/images/{image_id}/thumbnail", params={"size": 64}, headers={"If-None-Match": etag}
        )
        assert other_size.status_code == 200 and max(Image.open(io.BytesIO(other_size.content)).size) == 64
        assert client.get(f"/v1/images/{image_id}/thumbnail").headers["content-type"] == "image/jpeg"
        for size in (0, 8, 513, 100000, "big"):
            problem(client.get(f"/v1/images/{image_id}/thumbnail", params={"size": size}), 422)
        (vector_only,) = client.post(
            "/v1/images", json={"items": [{"embedding": vectors(1)[0], "product_id": "v"}]}
        ).json()["ids"]
        body = problem(client.get(f"/v1/images/{vector_only}/thumbnail"), 404)
        assert "stored as an embedding only" in body["detail"] and "uri" not in body
        (by_url,) = client.post(
            "/v1/images", json={"items": [{"url": "https://images.example.com/a%20b.jpg", "product_id": "u"}]}
        ).json()["ids"]
        body = problem(client.get(f"/v1/images/{by_url}/thumbnail"), 404)
        assert "uploaded by URL" in body["detail"] and body["uri"] == "https://images.example.com/a%20b.jpg"
        problem(client.get("/v1/images/999999999/thumbnail"), 404)


@pytest.mark.parametrize(
    "url", ["/etc/passwd", "file:///etc/passwd", "ftp://example.com/a.png", "http://", " http://x/a"]
)
def test_urls_must_be_http_never_a_path_on_the_server(api: Api, tenant: str, url: str) -> None:
    with api.client(api.key(tenant)) as client:
        body = problem(client.post("/v1/images", json={"items": [{"url": url, "product_id": "p"}]}), 400)
    assert body["index"] == 0
    assert image_ids(api, tenant) == set()
    assert os.path.exists("/etc/passwd")


SAMPLE_MUG = (Path(__file__).parents[2] / "imgsearch" / "samples" / "images" / "mug-red.png").read_bytes()


def _reencoded(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG", quality=70)
    return out.getvalue()


def test_near_copies_are_rejected_linked_and_listed(api: Api, tenant: str) -> None:
    copy = _reencoded(SAMPLE_MUG)
    with api.client(api.key(tenant)) as client:
        first = client.post("/v1/images", data={"product_id": "A"}, files={"file": ("a.png", SAMPLE_MUG)})
        assert first.status_code == 201, first.text
        original = first.json()["ids"][0]
        refused = client.post(
            "/v1/images?on_duplicate=reject", data={"product_id": "B"}, files={"file": ("b.jpg", copy)}
        )
        body = problem(refused, 409)
        assert body["type"] == "/problems/duplicate-image"
        assert (body["image_id"], body["product_id"]) == (original, "A")
        assert f"near-copy of image {original} of product 'A'" in body["detail"]
        assert image_ids(api, tenant) == {original}
        linked = client.post(
            "/v1/images?on_duplicate=link", data={"product_id": "B"}, files={"file": ("b.jpg", copy)}
        )
        assert linked.status_code == 201, linked.text
        copy_id = linked.json()["ids"][0]
        image = client.get(f"/v1/images/{copy_id}").json()
        assert image["duplicate_of"] == original and len(image["phash"]) == 64
        assert image["state"] == "ready"  # embedded by the check
        problem(
            client.post(
                "/v1/images?on_duplicate=drop", data={"product_id": "C"}, files={"file": ("c.jpg", copy)}
            ),
            422,
        )

        listed = client.get("/v1/duplicates").json()  # the original isn't embedded yet (no worker here)
        assert listed["groups"] == [] and listed["unconfirmed"] == 1 and listed["images"] == 2
        by_hash = client.get("/v1/duplicates", params={"hash_only": "true"}).json()
        assert [[m["image_id"] for m in g] for g in by_hash["groups"]] == [[original, copy_id]]
        assert by_hash["groups"][0][1]["hamming"] <= 4
        problem(client.get("/v1/duplicates", params={"max_hamming": 64}), 422)
    with api.client(api.key(f"{tenant}-other")) as other:
        assert other.get("/v1/duplicates", params={"hash_only": "true"}).json()["groups"] == []
    with api.client(api.key(admin=True)) as admin:
        assert "names the tenant" in problem(admin.get("/v1/duplicates"), 400)["detail"]
        assert (
            len(admin.get("/v1/duplicates", params={"tenant": tenant, "hash_only": "true"}).json()["groups"])
            == 1
        )


def test_a_photo_shared_by_variants_is_embedded_once_and_found_as_each(
    api: Api, tenant: str, tmp_path: Path, tiny_siglip: Path
) -> None:
    """Two products upload the same photo: one image, embedded once by a real worker, found as
    both with each one's price; deleting one product leaves it the other's."""
    picture = image_bytes(300, size=(64, 64))
    with api.client(api.key(tenant)) as client:
        ids = [
            client.post(
                "/v1/images", files={"file": ("tee.png", picture)}, data={"product_id": sku, "price": price}
            ).json()["ids"][0]
            for sku, price in (("tee-s", "10"), ("tee-m", "12"))
        ]
        assert ids[0] == ids[1]
        workers = Workers({**api.env, "IMGSEARCH_SWEEP_SECONDS": "1", "TMPDIR": str(tmp_path)}, tmp_path)
        workers.start()
        try:
            wait_until(
                lambda: client.get(f"/v1/images/{ids[0]}").json()["state"] == "ready",
                180,
                workers,
                "embedded",
            )
        finally:
            workers.stop_all()
        record = client.get(f"/v1/images/{ids[0]}").json()
        assert (record["product_id"], record["product_ids"]) == ("tee-s", ["tee-s", "tee-m"])
        hits = client.post("/v1/search", json={"similar_to_product": "tee-m", "k": 5}).json()["hits"]
        assert [(h["image_id"], h["product_id"], h["price"]) for h in hits] == [(ids[0], "tee-s", 10.0)]
        found = client.post("/v1/search", json={"text": "a tee", "price_min": 11}).json()["hits"]
        assert [(h["product_id"], h["price"]) for h in found] == [("tee-m", 12.0)]
        assert client.delete("/v1/products/tee-s").status_code == 200
        assert client.get(f"/v1/images/{ids[0]}").json()["product_ids"] == ["tee-m"]
    with api.engine.connect() as conn:
        embedded = conn.execute(
            text("SELECT count(*) FROM imgsearch.embeddings WHERE tenant = :t"), {"t": tenant}
        )
        assert embedded.scalar_one() == 1


def test_get_with_wait_answers_when_the_image_is_ready(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    import threading
    import time

    from imgsearch import Catalog
    from imgsearch.settings import Settings
    from imgsearch.work import pipeline
    from tests.conftest import new_database
    from tests.server.conftest import start_api

    url = new_database(server_url, template_db)
    api = start_api(url, tiny_siglip, tmp_path)
    try:
        with Catalog.open(url, model=str(tiny_siglip)) as catalog, api.client(api.key("acme")) as client:
            image_id = catalog.add(image_bytes(77), tenant="acme", product_id="w1")
            assert client.get(f"/v1/images/{image_id}", params={"wait": 0.5}).json()["state"] == "pending"
            drain = threading.Timer(1.0, lambda: pipeline.drain(
                catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
                downloads=Settings().downloads(), progress=False))  # fmt: skip
            drain.start()
            started = time.monotonic()
            answer = client.get(f"/v1/images/{image_id}", params={"wait": 50})
            drain.join()
            assert answer.status_code == 200 and answer.json()["state"] == "ready"
            assert time.monotonic() - started < 40  # the commit's notification, not the limit
            for bad in ("61", "-1", "nan", "soon"):
                assert client.get(f"/v1/images/{image_id}", params={"wait": bad}).status_code == 422
            assert client.get("/v1/images/987654321", params={"wait": 1}).status_code == 404
    finally:
        api.stop()
