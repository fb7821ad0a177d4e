"""Deleting images and products: embeddings go with them, all or nothing, per tenant, and
neither a worker's batch nor a search trips over what was deleted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.work import queue
from tests.helpers import clustered, exact_similarities, image_bytes, locks_in_key_order, run_cli, unit


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    with Catalog.open(database_url) as cat:
        yield cat


def counts(catalog: Catalog, tenant: str = "acme") -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return {
            table: conn.execute(
                text(f"SELECT count(*) FROM imgsearch.{table} WHERE tenant = :t"), {"t": tenant}
            ).scalar_one()
            for table in ("products", "images", "embeddings")
        }


def test_delete_removes_the_image_and_its_embedding_and_keeps_the_product(catalog: Catalog) -> None:
    keep = catalog.add(image_bytes(1), embedding=unit(768, 1), tenant="acme", product_id="mug")
    gone = catalog.add(image_bytes(2), embedding=unit(768, 2), tenant="acme", product_id="mug")
    assert counts(catalog) == {"products": 1, "images": 2, "embeddings": 2}

    catalog.delete(gone)
    assert counts(catalog) == {"products": 1, "images": 1, "embeddings": 1}
    with pytest.raises(NotFound, match=f"no image with id {gone}"):
        catalog.get(gone)
    assert catalog.get(keep).state == "ready"
    assert [h.image_id for h in catalog.search(vector=unit(768, 2), k=5)] == [keep]
    with pytest.raises(NotFound, match=f"no image with id {gone}; nothing deleted"):
        catalog.delete(gone)  # deleting twice says so
    again = catalog.add(image_bytes(2), embedding=unit(768, 2), tenant="acme", product_id="mug")
    assert again != gone  # the same bytes are a new image once the old one is gone


def test_delete_many_is_all_or_nothing(catalog: Catalog) -> None:
    ids = catalog.add_many(
        {"embedding": unit(768, i), "tenant": "acme", "product_id": f"p{i}"} for i in range(4)
    )
    with pytest.raises(NotFound, match=r"no image with id 987654 \(and 1 more\); nothing deleted"):
        catalog.delete_many([ids[0], 987654, ids[1], 987655])
    with pytest.raises(NotFound, match=r"no image with id '1'; nothing deleted"):
        catalog.delete_many([ids[0], "1"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="at most 10000 image ids per call"):
        catalog.delete_many(range(1, 10_002))
    assert counts(catalog)["images"] == 4
    assert catalog.delete_many([]) == 0
    assert catalog.delete_many([ids[0], ids[1], ids[0]]) == 2
    assert counts(catalog) == {"products": 4, "images": 2, "embeddings": 2}


def test_a_tenant_deletes_its_own_images_only(catalog: Catalog) -> None:
    theirs = catalog.add(embedding=unit(768, 1), tenant="globex", product_id="mug")
    ours = catalog.add(embedding=unit(768, 2), tenant="acme", product_id="mug")
    with pytest.raises(NotFound, match=f"no image with id {theirs}; nothing deleted"):
        catalog.delete_many([ours, theirs], tenant="acme")  # row-level security hides theirs
    assert counts(catalog, "globex")["images"] == 1 and counts(catalog, "acme")["images"] == 1
    catalog.delete(ours, tenant="acme")
    assert counts(catalog, "acme")["images"] == 0 and counts(catalog, "globex")["images"] == 1


def test_delete_product_takes_its_images_and_embeddings(catalog: Catalog) -> None:
    for i in range(3):
        catalog.add(image_bytes(i), tenant="acme", product_id="sku-1")  # pending: no embedding yet
    catalog.add(embedding=unit(768, 9), tenant="acme", product_id="sku-1")
    catalog.add(embedding=unit(768, 8), tenant="acme", product_id="sku-2")
    catalog.add(embedding=unit(768, 7), tenant="globex", product_id="sku-1")  # product ids are per tenant

    assert catalog.delete_product("sku-1", tenant="acme") == 4
    assert counts(catalog) == {"products": 1, "images": 1, "embeddings": 1}
    assert counts(catalog, "globex") == {"products": 1, "images": 1, "embeddings": 1}
    with catalog.engine.connect() as conn:  # nothing left for the workers to claim
        assert (
            conn.execute(text("SELECT count(*) FROM imgsearch.images WHERE state = 'pending'")).scalar() == 0
        )
    with pytest.raises(NotFound, match="tenant 'acme' has no product 'sku-1'"):
        catalog.delete_product("sku-1", tenant="acme")


@pytest.mark.parametrize(
    ("product_id", "tenant", "message"),
    [
        ("", "acme", "product_id must not be empty"),
        ("  ", "acme", "product_id must not be empty"),
        (None, "acme", "product_id must be a string, got NoneType"),
        (4.2, "acme", "product_id must be a string, got float"),
        ("a\x00b", "acme", "contains control characters"),
        ("sku", "", "tenant must not be empty"),
        ("sku", "a\x00b", "contains control characters"),
    ],
)
def test_delete_product_bad_input_is_one_clear_error(
    catalog: Catalog, product_id: object, tenant: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        catalog.delete_product(product_id, tenant=tenant)  # type: ignore[arg-type]


def test_injection_strings_delete_nothing(catalog: Catalog) -> None:
    catalog.add(embedding=unit(768, 1), tenant="acme", product_id="mug")
    for attack in ("mug' OR '1'='1", "x'; DELETE FROM imgsearch.images; --", "%", "mug%"):
        with pytest.raises(NotFound):
            catalog.delete_product(attack, tenant="acme")
        with pytest.raises(NotFound):
            catalog.delete_product("mug", tenant=attack)
    assert counts(catalog) == {"products": 1, "images": 1, "embeddings": 1}


def test_an_image_deleted_while_a_worker_embeds_it_is_not_stored(catalog: Catalog) -> None:
    ids = catalog.add_many(
        {"image": image_bytes(i), "tenant": "acme", "product_id": f"p{i}"} for i in range(3)
    )
    with catalog.engine.begin() as conn:
        claims = queue.claim(conn, 3)
    catalog.delete(ids[1])  # while the batch is being embedded
    with catalog.engine.begin() as conn:
        stored = queue.store(conn, catalog.registered_model(), claims, [unit(768, i) for i in range(3)])
    assert (stored.ready, stored.lost, stored.failed) == (2, 1, 0)
    assert counts(catalog) == {"products": 3, "images": 2, "embeddings": 2}
    assert {catalog.get(i).state for i in (ids[0], ids[2])} == {"ready"}


def test_searches_right_after_a_delete_still_return_the_exact_top_k(catalog: Catalog) -> None:
    """Deleted rows stay in the HNSW index until a vacuum. With the 300 rows nearest the query
    deleted, every candidate of the HNSW pass (ef_search 200) is dead: searches must still return
    k rows, the nearest of those left."""
    vectors, labels = clustered(3000, 768, clusters=6, seed=3)
    ids = catalog.add_many(
        {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": f"c{labels[i]}"}
        for i, v in enumerate(vectors)
    )
    query = vectors[0]
    nearest = np.argsort(-exact_similarities(vectors, query))
    catalog.delete_many([ids[i] for i in nearest[:300]])
    left = nearest[300:]
    with catalog.engine.begin() as conn:  # plain pgvector on the same index: dead rows only
        conn.execute(text("SET LOCAL hnsw.ef_search = 200"))
        # the upload analysed the tables: on 3,000 rows the planner would sort them all instead
        # of walking the graph (a scan of the rows, or of an index, then a sort): neither, here
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_sort = off"))
        naive = conn.execute(
            text(
                "SELECT image_id FROM imgsearch.embeddings WHERE model_id = :m "
                "ORDER BY embedding::halfvec(768) <=> CAST(:q AS halfvec(768)) LIMIT 10"
            ),
            {"m": catalog.active_model.id, "q": str(query.tolist())},
        ).all()
    assert len(naive) < 10
    expected = [ids[i] for i in left[:10]]
    assert [h.image_id for h in catalog.search(vector=query, k=10)] == expected
    category = f"c{labels[0]}"
    in_category = [ids[i] for i in left if labels[i] == labels[0]][:10]
    assert [h.image_id for h in catalog.search(vector=query, category=category, k=10)] == in_category


def test_the_delete_command(database_url: str, catalog: Catalog) -> None:
    ids = catalog.add_many(
        {"embedding": unit(768, i), "tenant": "acme", "product_id": f"p{i % 2}"} for i in range(4)
    )
    db = {"IMGSEARCH_DATABASE_URL": database_url}
    one = run_cli("delete", str(ids[0]), "--tenant", "acme", **db)
    assert one.returncode == 0 and one.stdout.strip() == "deleted 1 images", one.stderr
    missing = run_cli("delete", str(ids[1]), "987654", **db)
    assert missing.returncode == 3
    assert missing.stderr.strip() == "imgsearch: no image with id 987654; nothing deleted"
    product = run_cli("delete", "--product", "p1", "--tenant", "acme", **db)
    assert product.returncode == 0, product.stderr
    assert product.stdout.strip() == "deleted product 'p1' of tenant 'acme' and its 2 images"
    assert counts(catalog) == {"products": 1, "images": 1, "embeddings": 1}
    for args, error in [
        ((), "give image ids or --product, not both and not neither"),
        (
            ("1", "--product", "p0", "--tenant", "acme"),
            "give image ids or --product, not both and not neither",
        ),
        (("--product", "p0"), "--product needs --tenant: product ids are per tenant"),
    ]:
        refused = run_cli("delete", *args, **db)
        assert refused.returncode == 2 and refused.stderr.strip() == f"imgsearch: {error}"


def test_a_delete_waits_for_a_writer_of_its_products_before_counting_their_facets_off(
    catalog: Catalog,
) -> None:
    first = catalog.add(image_bytes(11), embedding=unit(768, 11), tenant="acme", product_id="first")
    second = catalog.add(image_bytes(12), embedding=unit(768, 12), tenant="acme", product_id="second")
    with catalog.engine.connect() as conn:
        pks = dict(
            conn.execute(text("SELECT product_id, id FROM imgsearch.products WHERE tenant = 'acme'")).all()
        )
    done: list[int] = []
    with catalog.engine.connect() as writer, writer.begin():
        # an upload of "second" in flight: it holds the product's row, as its upsert does
        writer.execute(
            text("SELECT 1 FROM imgsearch.products WHERE id = :p FOR NO KEY UPDATE"), {"p": pks["second"]}
        )
        thread = threading.Thread(
            target=lambda: done.append(catalog.delete_many([second, first], tenant="acme"))
        )
        thread.start()
        waiting = False
        for _ in range(200):
            with catalog.engine.connect() as conn:
                waiting = bool(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE '%FOR NO KEY UPDATE%' AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                )
            if waiting:
                break
            time.sleep(0.05)
        assert waiting and not done  # the delete waits on the products, in id order
        with catalog.engine.connect() as conn, conn.begin():  # and has counted no product off yet
            locked = conn.execute(
                text(
                    "SELECT product_pk FROM imgsearch.facet_members WHERE product_pk = :p FOR UPDATE NOWAIT"
                ),
                {"p": pks["first"]},
            ).all()
            assert len(locked) == 1
    thread.join(timeout=30)
    assert done == [2]
    assert counts(catalog) == {"products": 2, "images": 0, "embeddings": 0}


def test_a_delete_locks_its_products_in_key_order_as_uploads_do(catalog: Catalog) -> None:
    def delete(product_ids: list[str]) -> None:
        with catalog.engine.connect() as conn:
            images = conn.execute(
                text(
                    "SELECT l.image_id FROM imgsearch.image_products l JOIN imgsearch.products p "
                    "ON p.id = l.product_pk WHERE p.product_id = ANY(:ids)"
                ),
                {"ids": product_ids},
            ).scalars()
            image_ids = list(images)
        assert catalog.delete_many(image_ids, tenant="acme") == 2

    locks_in_key_order(catalog, delete)
    assert counts(catalog) == {"products": 2, "images": 0, "embeddings": 0}
