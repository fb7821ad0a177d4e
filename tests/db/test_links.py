"""A photo shared by several products (issue 42, item 1): stored and embedded once, linked to each
product, and found as each of them, with each product's own category and price, through every
write path (add, add_many, import, the worker, a backfill) and every read (search, grouping,
similar_to_product, get, categories, duplicates); deleting one product keeps it for the others."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import DuplicateImage
from imgsearch.work import pipeline, reembed
from tests.helpers import image_bytes, run_cli, unit

DIM = 768
PHOTO = image_bytes(7, size=(64, 64))


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    with Catalog.open(database_url) as cat:
        yield cat


def table_counts(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM imgsearch.{table}")).scalar_one()
            for table in ("products", "images", "image_products", "embeddings")
        }


def found(catalog: Catalog, **query: object) -> list[tuple[int, str, str | None, float | None]]:
    hits = catalog.search(**query)  # type: ignore[arg-type]
    return [(h.image_id, h.product_id, h.category, None if h.price is None else float(h.price)) for h in hits]


def test_a_photo_two_products_upload_is_stored_once_and_found_as_each(catalog: Catalog) -> None:
    vector = unit(DIM, 1)
    first = catalog.add_row(
        {
            "image": PHOTO,
            "embedding": vector,
            "tenant": "acme",
            "product_id": "tee-red",
            "category": "tees",
            "price": 10,
        }
    )
    second = catalog.add_row(
        {"image": PHOTO, "tenant": "acme", "product_id": "tee-blue", "category": "sale", "price": 50}
    )
    assert (first[1], first.shared) == (True, False)
    assert second[0] == first[0] and (second[1], second.shared) == (False, True)  # the same image, now both's
    again = catalog.add_row({"image": PHOTO, "tenant": "acme", "product_id": "tee-blue"})
    assert (again[1], again.shared) == (False, False)  # a product's own photo again: nothing new
    assert table_counts(catalog) == {"products": 2, "images": 1, "image_products": 2, "embeddings": 2}
    with catalog.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*) FROM imgsearch.images WHERE content IS NOT NULL")
        ).scalar()
    assert stored == 1  # the bytes once

    image = first[0]
    assert sorted(found(catalog, vector=vector, k=5)) == [
        (image, "tee-blue", "sale", 50.0),
        (image, "tee-red", "tees", 10.0),
    ]
    # each product's own category and price filter its own row
    assert found(catalog, vector=vector, category="sale") == [(image, "tee-blue", "sale", 50.0)]
    assert found(catalog, vector=vector, price_max=20) == [(image, "tee-red", "tees", 10.0)]
    grouped = catalog.search(vector=vector, group_by_product=True, tenant="acme")
    assert sorted(h.product_id for h in grouped) == ["tee-blue", "tee-red"]
    # "more like this product": the second product exists and has its image; the first shares it
    similar = catalog.search(similar_to_product="tee-blue", tenant="acme", k=3)
    assert [(h.product_id, round(h.distance, 3)) for h in similar] == [("tee-red", 0.0)]
    # "more like this image" leaves the image out, whichever product it is
    assert catalog.search(similar_to=image, k=3) == []

    record = catalog.get(image, tenant="acme")
    assert (record.product_id, record.product_ids, record.category) == (
        "tee-red",
        ["tee-red", "tee-blue"],
        "tees",
    )
    assert catalog.categories(tenant="acme") == [("sale", 1), ("tees", 1)]


def test_deleting_one_product_keeps_the_shared_image_for_the_other(catalog: Catalog) -> None:
    rows = [
        {"image": PHOTO, "embedding": unit(DIM, 1), "tenant": "acme", "product_id": p, "category": c}
        for p, c in (("tee-red", "tees"), ("tee-blue", "tees"), ("tee-green", "tees"))
    ]
    ids = catalog.add_many(rows)
    own = catalog.add(image_bytes(8), embedding=unit(DIM, 2), tenant="acme", product_id="tee-red")
    assert len(set(ids)) == 1
    assert catalog.delete_product("tee-red", tenant="acme") == 2  # its own image and the shared one
    assert table_counts(catalog) == {"products": 2, "images": 1, "image_products": 2, "embeddings": 2}
    record = catalog.get(ids[0], tenant="acme")
    assert (record.product_id, record.product_ids) == ("tee-blue", ["tee-blue", "tee-green"])
    with pytest.raises(Exception, match=f"no image with id {own}"):
        catalog.get(own)
    assert sorted(h.product_id for h in catalog.search(vector=unit(DIM, 1), tenant="acme")) == [
        "tee-blue",
        "tee-green",
    ]
    # a product deleted in SQL (a console, an ORM's cascade) keeps it too: the database does it
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM imgsearch.products WHERE product_id = 'tee-blue'"))
    assert catalog.get(ids[0]).product_ids == ["tee-green"]
    catalog.delete_product("tee-green", tenant="acme")
    assert table_counts(catalog) == {"products": 0, "images": 0, "image_products": 0, "embeddings": 0}


def test_deleting_the_image_removes_it_from_every_product(catalog: Catalog) -> None:
    ids = catalog.add_many(
        {"image": PHOTO, "embedding": unit(DIM, 1), "tenant": "acme", "product_id": p} for p in ("a", "b")
    )
    catalog.delete(ids[0], tenant="acme")
    assert table_counts(catalog) == {"products": 2, "images": 0, "image_products": 0, "embeddings": 0}


def test_another_tenant_with_the_same_bytes_gets_its_own_image(catalog: Catalog) -> None:
    ours = catalog.add(PHOTO, embedding=unit(DIM, 1), tenant="acme", product_id="tee")
    theirs = catalog.add(PHOTO, embedding=unit(DIM, 1), tenant="globex", product_id="tee")
    assert ours != theirs
    assert catalog.get(theirs, tenant="globex").product_ids == ["tee"]
    assert [h.tenant for h in catalog.search(vector=unit(DIM, 1), tenant="globex")] == ["globex"]


def test_importing_a_repeated_vector_shares_it(catalog: Catalog) -> None:
    vector = unit(DIM, 3)
    first = catalog.import_report([{"embedding": vector, "tenant": "acme", "product_id": "a", "price": 5}])
    assert (first.imported, first.linked) == (1, 0)
    again = catalog.import_report(
        [
            {"embedding": vector, "tenant": "acme", "product_id": "b", "price": 7},
            {"embedding": vector, "tenant": "acme", "product_id": "c", "price": 9},
            {"embedding": vector, "tenant": "acme", "product_id": "a"},
            {"embedding": unit(DIM, 4), "tenant": "acme", "product_id": "d", "category": "dee", "price": 3},
            {"embedding": unit(DIM, 4), "tenant": "acme", "product_id": "e", "category": "eee", "price": 4},
        ]
    )
    # one new image (d's, shared by e in the same import); b and c now share a's
    assert (again.imported, again.duplicates, again.linked) == (1, 4, 3)
    assert table_counts(catalog) == {"products": 5, "images": 2, "image_products": 5, "embeddings": 5}
    hits = catalog.search(vector=vector, tenant="acme", k=3)
    assert [(h.product_id, float(h.price or 0)) for h in hits[:3]] == [("a", 5.0), ("b", 7.0), ("c", 9.0)]
    # each of the new image's products' rows with that product's filter columns (the import gives
    # the first product's, the row trigger reads the others', migration 0048)
    shared = catalog.search(vector=unit(DIM, 4), tenant="acme", k=2)
    assert sorted((h.product_id, h.category, float(h.price or 0)) for h in shared) == [
        ("d", "dee", 3.0),
        ("e", "eee", 4.0),
    ]
    assert [h.product_id for h in catalog.search(vector=unit(DIM, 4), tenant="acme", category="eee", price_min=4)] == [
        "e"
    ]


def test_a_near_copy_check_treats_a_shared_photo_as_the_products_own(catalog: Catalog) -> None:
    catalog.add(PHOTO, embedding=unit(DIM, 1), tenant="acme", product_id="a")
    catalog.add(PHOTO, tenant="acme", product_id="b")  # shared, as "keep" does
    assert catalog.add(PHOTO, tenant="acme", product_id="b", on_duplicate="reject")  # b's own: no copy
    with pytest.raises(DuplicateImage, match="product 'a'"):  # a third product still gets the check
        catalog.add(PHOTO, embedding=unit(DIM, 1), tenant="acme", product_id="c", on_duplicate="reject")


def test_the_worker_and_a_backfill_embed_a_shared_photo_for_each_product(
    database_url: str, tiny_siglip: Path, tiny_clip: Path
) -> None:
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        image = catalog.add(PHOTO, tenant="acme", product_id="a", category="tees")
        catalog.add(PHOTO, tenant="acme", product_id="b", category="sale")  # shared while pending
        assert table_counts(catalog)["embeddings"] == 0
        totals = pipeline.drain(
            catalog.engine,
            lambda model: catalog.embedder,
            batch_size=8,
            lease_seconds=60,
            downloads=catalog.settings.downloads(),
            progress=False,
        )
        assert totals.ready == 1  # embedded once
        assert table_counts(catalog)["embeddings"] == 2  # a row for each product
        catalog.add(PHOTO, tenant="acme", product_id="c", category="tees")  # shared once ready
        rows = found(catalog, text="a photo", k=5)
        assert sorted((r[1], r[2]) for r in rows) == [("a", "tees"), ("b", "sale"), ("c", "tees")]
        assert {r[0] for r in rows} == {image}
        assert found(catalog, text="a photo", category="sale") == [(image, "b", "sale", None)]

        model = reembed.register(catalog.engine, str(tiny_clip), 24)
        clip = catalog.with_model(str(tiny_clip))
        result = reembed.backfill(
            catalog.engine,
            model,
            clip.embedder.embed_images,
            batch_size=4,
            downloads=catalog.settings.downloads(),
        )
        assert (result.embedded, result.errors) == (1, {})
        with catalog.engine.connect() as conn:
            per_model = conn.execute(
                text("SELECT model_id, count(*) FROM imgsearch.embeddings GROUP BY 1 ORDER BY 1")
            ).all()
        assert [count for _, count in per_model] == [3, 3]
        with catalog.engine.connect() as conn:
            assert reembed.missing_count(conn, model) == 0


def test_a_feed_repeating_a_photo_for_variants_shares_it(
    database_url: str, tiny_siglip: Path, tmp_path: Path
) -> None:
    (tmp_path / "tee.png").write_bytes(PHOTO)
    manifest = tmp_path / "feed.csv"
    manifest.write_text(
        "image,product_id,category,price\n"
        f"{tmp_path / 'tee.png'},tee-s,tees,10\n"
        f"{tmp_path / 'tee.png'},tee-m,tees,12\n"
        f"{tmp_path / 'tee.png'},tee-l,tees,14\n"
    )
    Catalog.open(database_url, model=str(tiny_siglip)).close()
    run = run_cli(
        "ingest", str(manifest), "--tenant", "acme",
        IMGSEARCH_DATABASE_URL=database_url, IMGSEARCH_MODEL=str(tiny_siglip),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == [
        "added 1, duplicates skipped 0, shared with another product 2",
        "embedded 1, failed 0",
    ]
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        hits = catalog.search(text="a tee", tenant="acme", price_min=11, k=5)
        assert sorted(h.product_id for h in hits) == ["tee-l", "tee-m"]


def test_the_duplicates_report_compares_images_of_different_products(catalog: Catalog) -> None:
    """An image two products share is one image, not a pair; a near-copy of it in a third product
    is a group."""
    photo = image_bytes(7, size=(96, 96))
    buffer = io.BytesIO()
    PILImage.open(io.BytesIO(photo)).resize((90, 90)).save(buffer, "PNG")
    near = buffer.getvalue()  # resized: other bytes, nearly the same hash
    vector = unit(DIM, 1)
    catalog.add(photo, embedding=vector, tenant="acme", product_id="a")
    catalog.add(photo, tenant="acme", product_id="b")
    report = catalog.duplicates(tenant="acme", max_distance=None)
    assert report.groups == []
    catalog.add(near, embedding=vector + 1e-3 * unit(DIM, 2), tenant="acme", product_id="c")
    report = catalog.duplicates(tenant="acme", max_distance=None)
    assert [sorted(m.product_id for m in g.members) for g in report.groups] == [["a", "c"]]


def test_an_image_written_in_sql_is_its_products_and_gets_its_search_row(catalog: Catalog) -> None:
    """Django or psql writing images directly: the database links each new image to its product,
    so the row an embedding needs is there."""
    catalog.add(image_bytes(1), embedding=unit(DIM, 1), tenant="acme", product_id="mug")
    with catalog.engine.begin() as conn:
        pk = conn.execute(text("SELECT id FROM imgsearch.products WHERE product_id = 'mug'")).scalar_one()
        image = conn.execute(
            text(
                "INSERT INTO imgsearch.images (product_pk, tenant, state) VALUES (:pk, 'acme', 'ready') RETURNING id"
            ),
            {"pk": pk},
        ).scalar_one()
        model = conn.execute(text("SELECT id FROM imgsearch.models WHERE active")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
                "VALUES (:m, :i, :pk, 'acme', CAST(:v AS halfvec))"
            ),
            {"m": model, "i": image, "pk": pk, "v": str(unit(DIM, 2).tolist())},
        )
    assert catalog.get(image).product_ids == ["mug"]
    assert catalog.search(vector=unit(DIM, 2), k=1)[0].image_id == image


def test_a_search_row_needs_its_link_and_its_images_tenant(catalog: Catalog) -> None:
    """The row's product has no key of its own (migration 0050): the link's key and the image's
    hold it. A row naming a product its image isn't linked to, or another shop, is refused; a
    product deleted takes its rows through its links."""
    from sqlalchemy.exc import IntegrityError

    image = catalog.add(image_bytes(1), embedding=unit(DIM, 1), tenant="acme", product_id="mug")
    catalog.add(image_bytes(2), embedding=unit(DIM, 2), tenant="acme", product_id="cup")
    catalog.add(image_bytes(3), embedding=unit(DIM, 3), tenant="globex", product_id="mug")
    insert = text(
        "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, region, box, embedding) "
        "SELECT m.id, :image, p.id, :tenant, 1, '{0,0,8,8}', CAST(:v AS halfvec) "
        "FROM imgsearch.models m, imgsearch.products p "
        "WHERE m.active AND p.tenant = :shop AND p.product_id = :product"
    )
    vector = str(unit(DIM, 4).tolist())
    refused = {
        "a product of the shop the image isn't linked to": ("acme", "acme", "cup", "embeddings_link_fkey"),
        "another shop's product of the same name": ("acme", "globex", "mug", "embeddings_link_fkey"),
        "the image's own product under another shop's name": ("globex", "acme", "mug", "embeddings_image_fkey"),
    }
    for why, (tenant, shop, product, key) in refused.items():
        with pytest.raises(IntegrityError, match=key), catalog.engine.begin() as conn:
            conn.execute(insert, {"image": image, "tenant": tenant, "shop": shop, "product": product, "v": vector})
        assert table_counts(catalog)["embeddings"] == 3, why
    with catalog.engine.begin() as conn:  # the row its link holds goes in (a region's: a second row)
        conn.execute(insert, {"image": image, "tenant": "acme", "shop": "acme", "product": "mug", "v": vector})
        assert conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar_one() == 4
        conn.execute(text("DELETE FROM imgsearch.products WHERE tenant = 'acme' AND product_id = 'mug'"))
    assert table_counts(catalog) == {"products": 2, "images": 2, "image_products": 2, "embeddings": 2}
