"""Two vector spaces in one catalog: a text model (SigLIP) and an image model (DINOv2) beside it.
Workers embed each image with both; image queries and "more like this" use the image model, text
queries the text model; switches with ``--for image|text|both``; and what the catalog refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import ConfigurationError, InvalidImage, InvalidInput
from imgsearch.samples import dataset
from imgsearch.settings import Settings
from imgsearch.work import pipeline, queue, reembed
from tests.helpers import run_cli


def _drain(catalog: Catalog) -> queue.BatchResult:
    from imgsearch.embed.model import Embedder

    made: dict[str, Embedder] = {}

    def embedder_for(model):  # type: ignore[no-untyped-def]
        return made.setdefault(model.name, Embedder(model.name))

    return pipeline.drain(catalog.engine, embedder_for, batch_size=8, lease_seconds=60,
                          downloads=Settings().downloads(), progress=False)  # fmt: skip


def _rows(count: int, seed: int) -> list[dict[str, object]]:
    items = dataset.draw(count, seed=seed, size=48)
    return [{"tenant": "acme", "product_id": f"s{seed}-{i}", "image": d.png, "title": d.caption} for i, d in enumerate(items)]


def _per_model(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT m.name, count(*) FROM imgsearch.embeddings e "
                                 "JOIN imgsearch.models m ON m.id = e.model_id GROUP BY m.name")).all()  # fmt: skip
    return {name: n for name, n in rows}


def test_an_image_model_beside_the_text_model(database_url: str, tiny_siglip: Path, tiny_dinov2: Path) -> None:
    dino = f"{tiny_dinov2}#mean"
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        ids = catalog.add_many(_rows(10, 1))
        assert _drain(catalog).ready == 10
        siglip = catalog.registered_model().name
        # the image model, backfilled beside the active one, then serving image queries
        images = reembed.register(catalog.engine, dino, 32)
        from imgsearch.embed.model import Embedder

        reembed.backfill(catalog.engine, images, Embedder(dino).embed_images, batch_size=8,
                         downloads=Settings().downloads())  # fmt: skip
        shown = run_cli("model", "activate", dino, "--for", "image", IMGSEARCH_DATABASE_URL=database_url)
        assert shown.returncode == 0, shown.stderr
        assert f"image queries: {dino}" in shown.stdout and f"text queries: {siglip}" in shown.stdout
        listed = run_cli("model", "list", IMGSEARCH_DATABASE_URL=database_url)
        assert any(line.startswith(dino) and line.rstrip().endswith("images") for line in listed.stdout.splitlines())

        catalog._context.active._checked = -1e9  # follow now, not in 5 s
        catalog._context.follow_model_switch()
        assert catalog._context.image_model.name == dino and catalog.active_model.name == siglip

        # new uploads: each image embedded with both models, in one store
        more = catalog.add_many(_rows(6, 2))
        assert _drain(catalog).ready == 6
        assert _per_model(catalog) == {siglip: 16, dino: 16}

        # an image query and "more like this" use DINOv2's vectors; a text query SigLIP's
        with catalog.engine.connect() as conn:
            vectors = {i: np.asarray(v, dtype=np.float32) for i, v in conn.execute(text(
                "SELECT e.image_id, e.embedding::vector::float4[] FROM imgsearch.embeddings e "
                "JOIN imgsearch.models m ON m.id = e.model_id WHERE m.name = :n"), {"n": dino}).all()}  # fmt: skip
        source = vectors[more[0]]
        nearest = sorted((i for i in vectors if i != more[0]),
                         key=lambda i: -float(vectors[i] @ source / np.linalg.norm(vectors[i]) / np.linalg.norm(source)))  # fmt: skip
        similar = catalog.search(similar_to=more[0], tenant="acme", k=3)
        assert [h.image_id for h in similar] == nearest[:3]
        with catalog.engine.begin() as conn:  # the SQL console's "more like this" too
            console = conn.execute(text("SELECT image_id FROM imgsearch.search_similar(:i, 3, 'acme')"),
                                   {"i": more[0]}).scalars().all()  # fmt: skip
            by_product = conn.execute(text("SELECT product_id FROM imgsearch.search_similar_product('acme', 's2-0', 3)")).scalars().all()
            worded_sql = conn.execute(text("SELECT count(*) FROM imgsearch.search_vector(:q, 3, 'acme')"),
                                      {"q": str([1.0] * 32)}).scalar()  # fmt: skip
        assert console == nearest[:3]
        library = catalog.search(similar_to_product="s2-0", tenant="acme", k=3)
        assert by_product == [h.product_id for h in library] and worded_sql == 3
        by_image = catalog.search(image=_rows(6, 2)[0]["image"], tenant="acme", k=1)
        assert by_image[0].image_id == more[0]
        worded = catalog.search(text="a red mug", tenant="acme", k=3, mode="semantic")
        assert len(worded) == 3  # SigLIP embeds the text; DINOv2 couldn't

        # eval --compare: which model serves image queries better, on a labelled set
        from imgsearch.quality.evaluation import LabelledSet, Query, compared, evaluate

        labelled = LabelledSet([Query(id="i", relevant={"s2-1": 1.0}, image_id=more[0], tenant="acme"),
                                Query(id="t", relevant={"s2-1": 1.0}, text="a red mug", tenant="acme")], "product")  # fmt: skip
        ours = evaluate(catalog, labelled, k=3)
        assert ours.model == f"{siglip} (images: {dino})"
        assert {q["id"]: q["model"] for q in ours.queries} == {"i": dino, "t": siglip}
        with catalog.with_model(siglip) as text_only:
            lines = compared([ours, evaluate(text_only, labelled, k=3)])
        assert [line.split(" (")[0] for line in lines] == ["image queries", "text queries"]
        assert all(line.endswith("serves them best") for line in lines)

        # an image neither model can read fails alone; the other of its batch is stored under both
        catalog.add_many(_rows(2, 8))
        with catalog.engine.begin() as conn:
            claims = queue.claim_batch(conn, 8)
        good = np.ones(32, np.float32)
        with catalog.engine.begin() as conn:
            stored = queue.store(conn, catalog.registered_model(), claims, [good, InvalidImage("unreadable")],
                                 also=(catalog._context.image_model, [good, InvalidImage("unreadable")]))  # fmt: skip
        assert (stored.ready, stored.failed) == (1, 1) and stored.errors == {claims[1].image_id: "unreadable"}
        assert _per_model(catalog) == {siglip: 17, dino: 17}

        # a batch embedded for the active model alone (a worker that hasn't followed) is given back
        catalog.add_many(_rows(2, 3))
        with catalog.engine.begin() as conn:
            claims = queue.claim_batch(conn, 8)
        with catalog.engine.begin() as conn:
            stale = queue.store(conn, catalog.registered_model(), claims, [np.ones(32, np.float32)] * len(claims))
        assert stale.stale_model and stale.ready == 0
        assert _drain(catalog).ready == 2 and _per_model(catalog) == {siglip: 19, dino: 19}

        # vectors uploaded with an image would give one model's only: refused, nothing written
        with pytest.raises(InvalidInput, match=r"embeds each image with two models .* upload the image without its embedding"):
            catalog.add(_rows(1, 4)[0]["image"], tenant="acme", product_id="v1", embedding=np.ones(32))
        with pytest.raises(InvalidInput, match="serves image queries; activate another one for images"):
            reembed.drop(catalog.engine, dino)

        # --for text keeps the image model; --for both gives the active model both again
        model, _ = reembed.activate(catalog.engine, siglip, serves="text")
        assert model.active and {r.name for r in reembed.listing(catalog.engine) if r.serves_images} == {dino}
        reembed.activate(catalog.engine, siglip, serves="both")
        assert not any(r.serves_images for r in reembed.listing(catalog.engine))
        catalog._context.active._checked = -1e9
        catalog._context.follow_model_switch()
        assert catalog._context.image_model.name == siglip
        assert catalog.search(similar_to=ids[0], tenant="acme", k=2)[0].image_id != ids[0]
        with pytest.raises(InvalidInput, match="serves one of both, text, image"):
            reembed.activate(catalog.engine, siglip, serves="audio")


def test_an_image_model_that_lacks_images_is_refused_until_backfilled(
    database_url: str, tiny_siglip: Path, tiny_dinov3: Path
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        catalog.add_many(_rows(3, 5))
        _drain(catalog)
        reembed.register(catalog.engine, str(tiny_dinov3), 32)
        with pytest.raises(ConfigurationError, match=r"3 ready images have no .* embedding yet"):
            reembed.activate(catalog.engine, str(tiny_dinov3), serves="image")
        _, requeued = reembed.activate(catalog.engine, str(tiny_dinov3), serves="image", requeue_missing=True)
        assert requeued == 3
        assert _drain(catalog).ready == 3 and set(_per_model(catalog).values()) == {3}


def test_two_models_on_a_citus_cluster(citus_cluster, tiny_siglip: Path, tiny_dinov2: Path) -> None:  # type: ignore[no-untyped-def]
    from imgsearch.embed.model import Embedder

    url = citus_cluster.create_catalog("citus_two_models")
    dino = f"{tiny_dinov2}#gem"
    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        catalog.add_many([{**row, "tenant": ("acme", "globex")[i % 2]} for i, row in enumerate(_rows(8, 6))])
        assert _drain(catalog).ready == 8
        images = reembed.register(catalog.engine, dino, 32)
        reembed.backfill(catalog.engine, images, Embedder(dino).embed_images, batch_size=8,
                         downloads=Settings().downloads())  # fmt: skip
        reembed.activate(catalog.engine, dino, serves="image")
        more = catalog.add_many([{**row, "tenant": ("acme", "globex")[i % 2]} for i, row in enumerate(_rows(6, 7))])
        assert _drain(catalog).ready == 6
        assert _per_model(catalog) == {catalog.active_model.name: 14, dino: 14}
        catalog._context.active._checked = -1e9
        catalog._context.follow_model_switch()
        hits = catalog.search(similar_to=more[0], tenant="acme", k=3)
        with catalog.engine.begin() as conn:
            console = conn.execute(text("SELECT image_id FROM imgsearch.search_similar(:i, 3, 'acme')"),
                                   {"i": more[0]}).scalars().all()  # fmt: skip
        assert [h.image_id for h in hits] == console and len(console) == 3
