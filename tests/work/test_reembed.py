"""Model switch without downtime: backfill a second model of another dimension, keep searching the
active one meanwhile, switch atomically, drop the old one; workers and open catalogs follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch import context as context_module
from imgsearch.db import vector_index
from imgsearch.errors import ConfigurationError, InvalidInput, NotFound
from imgsearch.work import queue, reembed
from tests.helpers import image_bytes, run_cli, unit


def model_rows(run_stdout: str) -> dict[str, tuple[int, int, bool]]:
    rows = {}
    for line in run_stdout.splitlines()[1:]:
        name, dim, count, index, *active = line.split()
        assert index == "valid"
        rows[Path(name).name] = (int(dim), int(count), active == ["yes"])
    return rows


def vector_search(env: dict[str, str], tmp_path: Path, dim: int) -> tuple[int, str]:
    (tmp_path / "v.json").write_text(json.dumps([1.0] * dim))
    run = run_cli("search", "--vector-file", str(tmp_path / "v.json"), "--json", **env)
    return run.returncode, run.stdout + run.stderr


def test_reembed_activate_and_drop_across_dimensions(
    database_url: str, tiny_siglip: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    for i in range(7):
        (tmp_path / f"p{i}.png").write_bytes(image_bytes(100 + i))
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    assert run_cli("ingest", *(str(tmp_path / f"p{i}.png") for i in range(6)), **env).returncode == 0

    backfill = run_cli("reembed", "--model", str(tiny_clip), "--batch-size", "4", **env)
    assert backfill.returncode == 0, backfill.stderr
    assert f"backfilling 6 images with {tiny_clip} (24-d)" in backfill.stdout
    assert "embedded 6, skipped 0" in backfill.stdout
    listed = model_rows(run_cli("model", "list", **env).stdout)
    assert listed == {tiny_siglip.name: (32, 6, True), tiny_clip.name: (24, 6, False)}
    # the backfill changed nothing for searches: still 32-d
    assert vector_search(env, tmp_path, 32)[0] == 0
    assert "expected 32" in vector_search(env, tmp_path, 24)[1]
    again = run_cli("reembed", "--model", str(tiny_clip), **env)
    assert "backfilling 0 images" in again.stdout  # resumable: nothing left to do

    # an image that became ready after the backfill blocks the switch until it is embedded too
    assert run_cli("ingest", str(tmp_path / "p6.png"), **env).returncode == 0
    refused = run_cli("model", "activate", str(tiny_clip), **env)
    assert refused.returncode == 2
    assert f"1 ready images have no '{tiny_clip}' embedding yet" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    caught_up = run_cli("reembed", "--model", str(tiny_clip), **env)
    assert "embedded 1, skipped 0" in caught_up.stdout

    switched = run_cli("model", "activate", str(tiny_clip), **env)
    assert switched.stdout.strip() == f"active model: {tiny_clip} (24-d)"
    code, out = vector_search(env, tmp_path, 24)
    assert code == 0 and len(out.splitlines()) == 7
    assert "expected 24" in vector_search(env, tmp_path, 32)[1]
    with Catalog.open(database_url) as catalog:
        assert (catalog.model, catalog.dim) == (str(tiny_clip), 24)
        assert len(catalog.search(text="a photo", k=3)) == 3  # text queries embed with the new model

    unconfirmed = run_cli("model", "drop", str(tiny_siglip), **env)
    assert unconfirmed.returncode == 2 and "pass --yes" in unconfirmed.stderr
    active = run_cli("model", "drop", str(tiny_clip), "--yes", **env)
    assert active.returncode == 2 and "is the active model" in active.stderr
    dropped = run_cli("model", "drop", str(tiny_siglip), "--yes", **env)
    assert dropped.stdout.strip() == f"dropped model {tiny_siglip}: 7 embeddings deleted"
    assert model_rows(run_cli("model", "list", **env).stdout) == {tiny_clip.name: (24, 7, True)}
    with Catalog.open(database_url) as catalog, catalog.engine.connect() as conn:
        indexes = conn.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'imgsearch' AND indexname LIKE 'embeddings_hnsw%'"
            )
        ).scalars()
        assert list(indexes) == [vector_index.index_name(catalog.active_model.id)]
    unknown = run_cli("model", "activate", "no-such-model", **env)
    assert unknown.returncode == 3 and "no model 'no-such-model'" in unknown.stderr


def test_requeue_missing_lets_the_workers_embed_with_the_new_model(
    database_url: str, tiny_siglip: Path, tiny_siglip_16: Path, tmp_path: Path
) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": str(tiny_siglip)}
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many({"image": image_bytes(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(3))
    assert run_cli("worker", "--drain", **env).stdout.startswith("embedded 3")
    engine = Catalog.open(database_url).engine
    new = reembed.register(engine, str(tiny_siglip_16), 16)
    with pytest.raises(ConfigurationError, match="3 ready images have no"):
        reembed.activate(engine, str(tiny_siglip_16))
    model, requeued = reembed.activate(engine, str(tiny_siglip_16), requeue_missing=True)
    assert (model.id, requeued) == (new.id, 3)
    assert run_cli("worker", "--drain", **env).stdout.startswith("embedded 3")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT model_id, count(*) FROM imgsearch.embeddings GROUP BY 1 ORDER BY 1")
        ).all()
        states = conn.execute(text("SELECT DISTINCT state FROM imgsearch.images")).scalars().all()
    assert [tuple(r) for r in rows] == [(new.id - 1, 3), (new.id, 3)] and states == ["ready"]
    with pytest.raises(InvalidInput, match="is the active model"):
        reembed.drop(engine, str(tiny_siglip_16))
    with pytest.raises(NotFound):
        reembed.drop(engine, "never-registered")
    with pytest.raises(InvalidInput, match=r"model name .* is not valid Unicode"):
        reembed.activate(engine, "siglip-\udcff")  # a path from bytes that aren't UTF-8
    engine.dispose()


def test_a_batch_embedded_with_the_old_model_is_given_back_not_stored(database_url: str) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add_many({"image": image_bytes(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(4))
        old = catalog.active_model
        with catalog.engine.begin() as conn:
            claims = queue.claim(conn, 4)
        new = reembed.register(catalog.engine, "google/siglip-base-patch16-384", 768)
        reembed.activate(catalog.engine, new.name, requeue_missing=True)  # switches while the batch "runs"
        with catalog.engine.begin() as conn:
            outcome = queue.store(conn, old, claims, [unit(768, i) for i in range(4)])
        assert outcome.stale_model and outcome.ready == 0
        with catalog.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar() == 0
            rows = conn.execute(text("SELECT state, attempts FROM imgsearch.images")).all()
        assert {tuple(r) for r in rows} == {("pending", 0)}  # back in the queue, attempt not counted


def test_an_open_catalog_follows_a_switch(
    database_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_module, "MODEL_REFRESH_SECONDS", 0.0)
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768, 1), tenant="acme", product_id="p1")
        other = reembed.register(catalog.engine, "google/siglip-base-patch16-384", 768)
        with catalog.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
                    "SELECT :m, image_id, product_pk, tenant, embedding FROM imgsearch.embeddings"
                ),
                {"m": other.id},
            )
        reembed.activate(catalog.engine, other.name)
        assert len(catalog.search(vector=np.ones(768), k=5)) == 1
        assert catalog.model == "google/siglip-base-patch16-384"
        reembed.drop(catalog.engine, "google/siglip-base-patch16-224")
        assert len(catalog.search(vector=np.ones(768), k=5)) == 1
