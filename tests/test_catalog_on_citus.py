"""The catalog's operations on a Citus cluster (``citus_cluster``) as on one node: the same story
(uploads, a shared photo, near-duplicates at upload, the worker's drain, reads, updates,
deletes, bulk imports, per-category graphs, the duplicates sweep, a model switch) told to a
catalog on the embedded server and to one distributed over the cluster, and every answer equal."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, event, text

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.errors import DuplicateImage, NotFound
from imgsearch.settings import Settings
from imgsearch.work import pipeline, progress, reembed
from tests.citus import CitusCluster
from tests.conftest import new_database
from tests.search.test_on_citus import DISTRIBUTED
from tests.workers.test_workers import jpeg

TENANTS = ("acme", "globex", "initech")


def _recoded(data: bytes) -> bytes:
    """The same picture saved again at another quality: a near-copy (other bytes, same hash)."""
    out = io.BytesIO()
    PILImage.open(io.BytesIO(data)).save(out, "JPEG", quality=70)
    return out.getvalue()


def _drain(catalog: Catalog) -> tuple[int, int]:
    totals = pipeline.drain(
        catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
        downloads=catalog.settings.downloads(), progress=False,
    )  # fmt: skip
    return totals.ready, totals.failed


def _hits(catalog: Catalog, **search: Any) -> list[tuple[Any, ...]]:
    return [(h.tenant, h.product_id, h.image_id, round(h.distance or 0, 4)) for h in catalog.search(**search)]


def _story(catalog: Catalog, other_model: Path, files: Path) -> dict[str, Any]:
    """Everything a shop and its admin do, and what each step answered."""
    seen: dict[str, Any] = {}
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((90, 32)).astype(np.float32)
    catalog.add_many(
        {"embedding": v, "tenant": TENANTS[i % 3], "product_id": f"v{i}", "category": f"c{i % 3}", "price": i}
        for i, v in enumerate(vectors)
    )
    photos = [jpeg(i) for i in range(6)]
    seen["uploads"] = [
        catalog.add(image=photo, tenant=TENANTS[i % 2], product_id=f"img{i}", category="shoes")
        for i, photo in enumerate(photos)
    ]
    seen["shared"] = catalog.add(image=photos[0], tenant="acme", product_id="variant0")  # the same photo
    seen["drained"] = _drain(catalog)
    with pytest.raises(DuplicateImage, match="near-copy of image") as refused:
        catalog.add(image=_recoded(photos[2]), tenant="acme", product_id="copy2", on_duplicate="reject")
    seen["refused"] = str(refused.value)
    seen["linked"] = catalog.get(
        catalog.add(image=_recoded(photos[2]), tenant="acme", product_id="copy2", on_duplicate="link"), tenant="acme"
    ).duplicate_of
    seen["drained again"] = _drain(catalog)
    record = catalog.get(seen["uploads"][0], tenant="acme")
    seen["get"] = (record.state, record.product_ids, record.has_embedding, catalog.get(seen["uploads"][1]).tenant)
    with pytest.raises(NotFound):
        catalog.get(seen["uploads"][1], tenant="acme")  # globex's
    seen["categories"] = (catalog.categories(tenant="acme"), catalog.categories())
    status = progress.status(catalog.engine, tenant="acme")
    seen["status"] = (status.counts, progress.status(catalog.engine).counts)
    seen["updated"] = (
        catalog.update_product("v0", tenant="acme", price=500, title="moved"),
        catalog.update_products([{"tenant": "globex", "product_id": "v1", "category": "c9"}]),
    )
    catalog.delete(seen["uploads"][3], tenant="globex")
    seen["deleted product"] = catalog.delete_product("v3", tenant="acme")
    seen["after writes"] = (
        _hits(catalog, vector=vectors[0], tenant="acme", price_min=400, k=3),
        _hits(catalog, vector=vectors[1], tenant="globex", category="c9", k=3),
    )

    imported = files / f"import-{catalog.engine.url.database}.jsonl"
    imported.write_text(
        "\n".join(
            json.dumps({"tenant": "initech", "product_id": f"imp{i}", "category": "bulk", "price": i,
                        "embedding": rng.standard_normal(32).tolist()})
            for i in range(40)
        )
    )  # fmt: skip
    first = catalog.import_report(imported, tenant="initech")
    again = catalog.import_report(imported)
    rebuilt = catalog.import_report(imported, rebuild_index=True)
    seen["imports"] = [(r.rows, r.imported, r.duplicates, r.index) for r in (first, again, rebuilt)]
    seen["imported search"] = _hits(catalog, vector=vectors[2], tenant="initech", category="bulk", k=5)

    built = catalog.index_filter_values("category", min_rows=20)
    seen["graphs"] = (sorted(built.built), sorted((g.value, g.rows, g.valid) for g in catalog.filter_graphs()))
    seen["graph search"] = _hits(catalog, vector=vectors[5], tenant="initech", category="bulk", k=5)

    report = catalog.duplicates(tenant="acme", progress=False)
    seen["duplicates"] = (report.images, [sorted(group.product_ids) for group in report.groups])

    model = reembed.register(catalog.engine, str(other_model), 16)
    other = catalog.with_model(str(other_model))
    done = reembed.backfill(
        catalog.engine, model, other.embedder.embed_images, batch_size=4, downloads=catalog.settings.downloads()
    )
    seen["backfilled"] = (done.embedded, sorted(done.errors))
    active, requeued = reembed.activate(catalog.engine, str(other_model), requeue_missing=True)
    seen["switched"] = (active.name == str(other_model), requeued)
    seen["dropped"] = reembed.drop(catalog.engine, catalog.model)
    with Catalog.open(
        str(catalog.engine.url.render_as_string(hide_password=False)), model=str(other_model),
        settings=Settings(model=str(other_model)),
    ) as switched:  # fmt: skip
        seen["on the new model"] = _hits(switched, similar_to=seen["uploads"][2], tenant="acme", k=3)
        seen["models"] = [(m.name == str(other_model), m.embeddings) for m in reembed.listing(switched.engine)]
    return seen


def test_a_shops_whole_story_answers_on_the_cluster_as_on_one_node(
    citus_cluster: CitusCluster, server_url: str, template_db: str, tiny_siglip: Path, tiny_siglip_16: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    told = []
    for url in (new_database(server_url, template_db), citus_cluster.create_catalog("citus_story")):
        with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
            told.append(_story(catalog, tiny_siglip_16, tmp_path))
    single, cluster = told
    for step in single:
        assert cluster[step] == single[step], step
    # and the story did happen
    assert single["drained"] == (6, 0) and single["linked"] == single["uploads"][2]
    assert single["imports"] == [(40, 40, 0, "kept"), (40, 0, 40, "kept"), (40, 0, 40, "rebuilt")]
    assert ("category", "bulk") in single["graphs"][0] and single["graph search"]
    assert single["duplicates"][1] == [["copy2", "img2"]], single["duplicates"]
    # the images with bytes re-embedded; the vectors brought from elsewhere can't be, and wait
    assert single["backfilled"][0] == 6 and single["models"] == [(True, 6)] and single["switched"][1] > 100


def test_a_shops_reads_go_to_its_node_alone(citus_cluster: CitusCluster, tiny_siglip: Path) -> None:
    """get, categories and status of a shop: every statement they send that reads a shop's table
    is planned by Citus as one task (a router query to the shop's node)."""
    url = citus_cluster.create_catalog("citus_reads")
    sent: list[tuple[str, Any]] = []

    def caught(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if DISTRIBUTED.search(statement) and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, params))

    with Catalog.open(url, model=str(tiny_siglip), settings=Settings(model=str(tiny_siglip))) as catalog:
        ids = catalog.add_many(
            {"embedding": np.eye(32, dtype=np.float32)[i], "tenant": TENANTS[i % 3], "product_id": f"p{i}",
             "category": "c"} for i in range(30)
        )  # fmt: skip
        event.listen(Engine, "before_cursor_execute", caught)
        try:
            catalog.get(ids[0], tenant="acme")
            catalog.categories(tenant="acme")
            progress.status(catalog.engine, tenant="acme")
        finally:
            event.remove(Engine, "before_cursor_execute", caught)
        assert len(sent) >= 5
        for statement, params in sent:
            with tenancy.begin(catalog.engine, "acme") as conn:
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")  # as run: planned for its values
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
            assert "Task Count: 1\n" in plan + "\n", f"not routed to one node:\n{statement}\n{plan}"


def test_regions_on_a_cluster_as_on_one_node(
    citus_cluster: CitusCluster, server_url: str, template_db: str, tiny_siglip: Path
) -> None:
    """A grid rule, the workers' drain, a backfill after a second rule, and searches ranking images
    by their best region: the same on a distributed catalog as on one node."""

    def story(catalog: Catalog) -> list[Any]:
        catalog.regions.set(grid=2, category="shoes")
        for i in range(4):
            catalog.add(image=jpeg(i), tenant=TENANTS[i % 2], product_id=f"s{i}", category="shoes")
            catalog.add(image=jpeg(10 + i), tenant=TENANTS[i % 2], product_id=f"b{i}", category="bags")
        drained = _drain(catalog)
        counts = catalog.regions.counts()
        catalog.regions.set(grid=2)
        done = catalog.regions.backfill()
        from imgsearch.embed.regions import grid_boxes
        from imgsearch.ingest.images import crop

        photo = jpeg(2)
        width, height = catalog.embedder.decode(photo).size
        query = catalog.embedder.embed_image(crop(photo, grid_boxes(width, height, 2)[0], catalog.limits))
        found = [
            [(h.product_id, h.region) for h in catalog.search(vector=query, tenant=tenant, k=4, regions=regions)]
            for tenant in TENANTS[:2] for regions in (True, False)
        ]  # fmt: skip
        look = [(o.box, [h.product_id for h in o.hits]) for o in catalog.search_look(image=jpeg(3), tenant="acme", k=2)]
        with catalog.engine.connect() as conn:  # the SQL console's search: each image once, as the library's
            console = [
                conn.execute(
                    text("SELECT product_id FROM imgsearch.search_vector(CAST(:q AS vector), 4, :t)"),
                    {"q": str([float(x) for x in query]), "t": tenant},
                ).scalars().all()
                for tenant in TENANTS[:2]
            ]  # fmt: skip
        assert console == [[p for p, _ in hits] for hits in found[::2]]
        return [drained, counts, (done.images, done.rows), found, look, console]

    settings = Settings(model=str(tiny_siglip))
    with Catalog.open(citus_cluster.create_catalog("citus_regions"), settings=settings) as catalog:
        cluster = story(catalog)
    with Catalog.open(new_database(server_url, template_db), settings=settings) as catalog:
        single = story(catalog)
    assert cluster == single
    assert single[:3] == [(8, 0), {"images": 4, "rows": 20}, (4, 20)]
    assert any(region is not None for hits in single[3] for _, region in hits)
