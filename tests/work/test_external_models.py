"""Models whose vectors come from elsewhere (`imgsearch model add NAME --dim D`): uploads and
imports bring the vectors; filters, duplicates by hash and eval with vectors work; a text or image
query is a typed error naming the model and asking for a query vector (issue 42, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from imgsearch import Catalog, ConfigurationError, InvalidInput
from imgsearch.errors import DuplicateImage, InvalidQuery
from imgsearch.quality import evaluation
from tests.helpers import image_bytes, run_cli, unit
from tests.server.conftest import problem, start_api

DIM = 16
NAME = "patrickjohncyh/fashion-clip"


def shop(catalog: Catalog) -> list[int]:
    rows = [
        {
            "embedding": unit(DIM, i),
            "tenant": "acme",
            "product_id": f"sku-{i}",
            "category": ["bags", "shoes"][i % 2],
        }
        for i in range(12)
    ]
    return catalog.add_many(rows)


def test_a_new_catalog_on_an_external_model(database_url: str, tmp_path: Path) -> None:
    with Catalog.open(database_url) as catalog:
        model = catalog.add_model(NAME, DIM, activate=True)
        assert (model.external, model.active, catalog.model, catalog.dim) == (True, True, NAME, DIM)
        ids = shop(catalog)
        hits = catalog.search(vector=unit(DIM, 3), tenant="acme", category="shoes", k=3)
        assert hits[0].image_id == ids[3] and {h.category for h in hits} == {"shoes"}
        assert [h.image_id for h in catalog.search(similar_to=ids[4], k=1)] != [ids[4]]
        for query in ({"text": "red shoes"}, {"image": image_bytes(1)}):
            with pytest.raises(InvalidQuery, match=f"model '{NAME}' embeds nothing here.*query vector"):
                catalog.search(**query, k=3)
        with pytest.raises(InvalidInput, match=f"upload: the catalog's model '{NAME}' embeds nothing here"):
            catalog.add(image=image_bytes(2), tenant="acme", product_id="no-vector")
        with pytest.raises(InvalidInput, match="row 1: the catalog's model"):
            catalog.add_many(
                [
                    {"embedding": unit(DIM), "tenant": "acme", "product_id": "a"},
                    {"image": "https://cdn.example.com/x.jpg", "tenant": "acme", "product_id": "b"},
                ]
            )
        # near-copies by hash, confirmed by the vectors the uploads bring
        photo = image_bytes(5)
        catalog.add(image=photo, embedding=unit(DIM, 50), tenant="acme", product_id="original")
        with pytest.raises(DuplicateImage):
            catalog.add(
                image=photo, embedding=unit(DIM, 50), tenant="acme", product_id="copy", on_duplicate="reject"
            )
        # eval with query vectors
        labelled = tmp_path / "set.jsonl"
        labelled.write_text(
            "".join(
                json.dumps({"vector": unit(DIM, i).tolist(), "relevant_products": [f"sku-{i}"]}) + "\n"
                for i in range(4)
            )
        )
        report = evaluation.evaluate(catalog, evaluation.load_set(labelled), k=1, depth=10)
        assert report.summary["ann"]["recall"] == 1.0 and report.model == NAME


def test_bad_registrations_name_the_problem(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add(embedding=unit(32), tenant="acme", product_id="p")  # tiny SigLIP has embeddings
        for dim in (0, 4001, "16", True, 1.5):
            with pytest.raises(InvalidInput, match="dim must be a whole number from 1 to 4000"):
                catalog.add_model(NAME, dim)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="model name must not be empty"):
            catalog.add_model("  ", DIM)
        with pytest.raises(
            ConfigurationError, match=r"1 ready images have no .* upload or import their vectors"
        ):
            catalog.add_model(NAME, DIM, activate=True)
        assert catalog.model == str(tiny_siglip)
        with pytest.raises(InvalidInput, match="registered with dimension 16, not 8"):
            catalog.add_model(NAME, 8)
        with pytest.raises(InvalidInput, match="registered with vectors made by imgsearch"):
            catalog.add_model(str(tiny_siglip), 32)


def test_the_commands_http_and_sql(database_url: str, tmp_path: Path) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url}
    added = run_cli("model", "add", NAME, "--dim", str(DIM), "--activate", **env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"registered {NAME} ({DIM}-d, vectors from elsewhere); active"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"embedding": unit(DIM, i).tolist(), "product_id": f"p{i}"}) + "\n" for i in range(5)
        )
    )
    assert run_cli("import", str(rows), "--tenant", "acme", **env).returncode == 0
    listed = run_cli("model", "list", **env).stdout.splitlines()
    assert listed[1].split() == [NAME, str(DIM), "5", "valid", "yes", "(vectors", "from", "elsewhere)"]
    text_search = run_cli("search", "--text", "a red bag", **env)
    assert text_search.returncode == 2 and f"model '{NAME}' embeds nothing here" in text_search.stderr
    assert len(text_search.stderr.strip().splitlines()) == 1
    (tmp_path / "q.json").write_text(json.dumps(unit(DIM, 2).tolist()))
    found = run_cli("search", "--vector-file", str(tmp_path / "q.json"), "--json", "-k", "1", **env)
    assert found.returncode == 0 and json.loads(found.stdout.splitlines()[0])["product_id"] == "p2"
    assert run_cli("worker", "--drain", **env).returncode == 0  # nothing to embed, nothing loaded

    url = make_url(database_url)
    with (
        psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn,
        pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="embeds no text here"),
    ):
        conn.execute("SELECT * FROM imgsearch.search_text('a red bag', 3)")

    api = start_api(database_url, Path(NAME), tmp_path / "api", "--preload")  # IMGSEARCH_MODEL=NAME
    try:
        with api.client(api.key("acme")) as client:
            body = problem(client.post("/v1/search", json={"text": "a red bag"}), 400)
            assert f"model '{NAME}' embeds nothing here" in body["detail"]
            hits = client.post("/v1/search", json={"vector": unit(DIM, 2).tolist(), "k": 1}).json()["hits"]
            assert hits[0]["product_id"] == "p2"
            body = problem(
                client.post(
                    "/v1/images",
                    json={"items": [{"url": "https://cdn.example.com/a.jpg", "product_id": "u"}]},
                ),
                400,
            )
            assert "give the upload its embedding" in body["detail"]
            assert client.get("/v1/status").json()["model"] == NAME
    finally:
        api.stop()
