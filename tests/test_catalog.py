"""Catalog.open, add, add_many and get against the real embedded PostgreSQL."""

from __future__ import annotations

import io
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from imgsearch import Catalog, DimensionMismatch, InvalidImage, InvalidInput, NotFound
from imgsearch.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    EmptyImage,
    ImageTooLarge,
    UnsupportedImage,
)
from imgsearch.settings import Settings
from tests.helpers import image_bytes, nested, unit

INJECTIONS = ["'; DROP TABLE imgsearch.images; --", "x' OR '1'='1", "$$;SELECT 1;$$", 'a"b\\c', "é🙂"]


@pytest.fixture
def catalog(database_url: str) -> Catalog:
    with Catalog.open(database_url) as cat:
        yield cat


def counts(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM imgsearch.{table}")).scalar_one()
            for table in ("products", "images", "embeddings")
        }


def test_open_reports_default_model_and_dim_without_weights(catalog: Catalog) -> None:
    assert catalog.model == "google/siglip-base-patch16-224"
    assert catalog.dim == 768


def test_reopen_keeps_data_and_model(database_url: str) -> None:
    with Catalog.open(database_url) as first:
        image_id = first.add(embedding=unit(768), tenant="acme", product_id="sku-1")
    with Catalog.open(database_url) as second:
        assert second.get(image_id).product_id == "sku-1"
        assert second.dim == 768
        with second.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM imgsearch.models")).scalar_one() == 1


def test_open_with_other_model_than_active_is_refused_once_it_has_embeddings(database_url: str) -> None:
    with Catalog.open(database_url) as first:
        first.add(embedding=unit(768), tenant="acme", product_id="sku-1")
    with pytest.raises(
        ConfigurationError,
        match=r"active model is 'google/siglip-base-patch16-224' and it has embeddings.*"
        r"`imgsearch reembed --model openai/clip-vit-base-patch32 --activate`",
    ):
        Catalog.open(database_url, model="openai/clip-vit-base-patch32")


def test_unreachable_database_is_a_clear_transient_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        Catalog.open("postgresql://nobody@127.0.0.1:1/none")


def test_add_image_is_pending_with_metadata(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "shoe.png"
    path.write_bytes(image_bytes(1, size=(40, 30)))
    image_id = catalog.add(
        image=str(path),
        tenant="acme",
        product_id="sku-1",
        category="shoes",
        price=49.9,
        currency="eur",
        attributes={"color": "red"},
    )
    record = catalog.get(image_id)
    assert record.state == "pending"
    assert (record.width, record.height, record.format) == (40, 30, "PNG")
    assert record.price == Decimal("49.9")
    assert record.currency == "EUR"
    assert record.attributes == {"color": "red"}
    assert record.category == "shoes"
    assert not record.has_embedding


def test_add_accepts_path_object_bytes_and_file_object(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes(2))
    ids = {
        catalog.add(image=path, tenant="acme", product_id="p1"),
        catalog.add(image=image_bytes(3), tenant="acme", product_id="p2"),
        catalog.add(image=io.BytesIO(image_bytes(4)), tenant="acme", product_id="p3"),
    }
    assert len(ids) == 3
    assert all(catalog.get(i).state == "pending" for i in ids)


def test_add_url_stores_uri_only(catalog: Catalog) -> None:
    image_id = catalog.add(image="https://cdn.example.com/a.jpg", tenant="acme", product_id="p1")
    record = catalog.get(image_id)
    assert record.uri == "https://cdn.example.com/a.jpg"
    assert record.sha256 is None and record.state == "pending"


def test_same_bytes_again_return_existing_image(catalog: Catalog) -> None:
    data = image_bytes(5)
    first = catalog.add(image=data, tenant="acme", product_id="sku-1")
    again = catalog.add(image=data, tenant="acme", product_id="sku-1")
    other_tenant = catalog.add(image=data, tenant="globex", product_id="sku-1")
    assert again == first
    assert other_tenant != first
    assert counts(catalog)["images"] == 2


def test_bring_your_own_embedding_is_ready(catalog: Catalog) -> None:
    image_id = catalog.add(embedding=unit(768, 1).tolist(), tenant="acme", product_id="sku-9", price=5)
    record = catalog.get(image_id)
    assert record.state == "ready" and record.has_embedding
    with catalog.engine.connect() as conn:
        stored = conn.execute(text("SELECT embedding::text FROM imgsearch.embeddings")).scalar_one()
    values = np.array([float(x) for x in stored.strip("[]").split(",")])
    assert np.allclose(values, unit(768, 1), atol=1e-3)  # halfvec keeps ~3 decimal digits


def test_names_are_looked_up_as_uploads_store_them(catalog: Catalog) -> None:
    """Uploads store an integer name as its digits and drop spaces around names; searches,
    deletes and tenant scopes read names the same way, so the value that made a row finds it."""
    vec = unit(768, 3)
    image_id = catalog.add(embedding=vec, tenant=" acme ", product_id=42, category=" shoes ")
    record = catalog.get(image_id, tenant="acme  ")
    assert (record.tenant, record.product_id, record.category) == ("acme", "42", "shoes")
    for tenant, category in ((" acme", "shoes "), ("acme", [" shoes", "boots"])):
        assert [h.image_id for h in catalog.search(vector=vec, tenant=tenant, category=category)] == [
            image_id
        ]
    other = catalog.add(embedding=unit(768, 4), tenant="acme", product_id=7, category=7)
    assert [h.image_id for h in catalog.search(vector=vec, category=[7], k=5)] == [other]
    assert [h.image_id for h in catalog.search(similar_to=other, tenant=" acme")] == [image_id]
    assert catalog.delete_product(42, tenant=" acme ") == 1
    assert catalog.delete_product(" 7", tenant="acme") == 1
    assert counts(catalog) == {"products": 0, "images": 0, "embeddings": 0}


def test_reupload_of_product_updates_given_fields_only(catalog: Catalog) -> None:
    catalog.add(
        embedding=unit(768, 1),
        tenant="acme",
        product_id="sku-1",
        category="shoes",
        price=10,
        attributes={"color": "red"},
    )
    second = catalog.add(
        embedding=unit(768, 2), tenant="acme", product_id="sku-1", price=12, attributes={"size": 42}
    )
    record = catalog.get(second)
    assert record.category == "shoes"
    assert record.price == Decimal(12)
    assert record.attributes == {"color": "red", "size": 42}
    assert counts(catalog)["products"] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"embedding": unit(767)}, DimensionMismatch, "767 dimensions, expected 768"),
        ({"embedding": [math.nan] * 768}, InvalidInput, "nan at index 0"),
        ({"embedding": [1.0] * 767 + [math.inf]}, InvalidInput, "inf at index 767"),
        ({"embedding": [0.0] * 768}, InvalidInput, "all zeros"),
        ({"embedding": "0.1,0.2"}, InvalidInput, "sequence of 768 numbers"),
        ({"embedding": [[0.1] * 768]}, InvalidInput, "one-dimensional"),
        ({"embedding": unit(768), "price": -1}, InvalidInput, "price must not be negative"),
        ({"embedding": unit(768), "price": math.nan}, InvalidInput, "price must be finite"),
        ({"embedding": unit(768), "price": "cheap"}, InvalidInput, "price must be a number"),
        ({"embedding": unit(768), "price": True}, InvalidInput, "price must be a number"),
        ({"embedding": unit(768), "currency": "euro"}, InvalidInput, "three-letter"),
        ({"embedding": unit(768), "attributes": ["red"]}, InvalidInput, "attributes must be a mapping"),
        ({"embedding": unit(768), "attributes": {"w": math.nan}}, InvalidInput, "must not hold NaN"),
        ({"embedding": unit(768), "attributes": {"w": "a\x00b"}}, InvalidInput, "NUL character"),
        ({"embedding": unit(768), "attributes": {"w\x00": 1}}, InvalidInput, "NUL character"),
        ({"embedding": unit(768), "attributes": {"w": "\ud800"}}, InvalidInput, "lone surrogate"),
        ({"embedding": unit(768), "attributes": {"w": {1, 2}}}, InvalidInput, "JSON values only"),
        ({"embedding": unit(768), "attributes": {"w": nested(40)}}, InvalidInput, "deeper than 32"),
        ({"embedding": unit(768), "attributes": {1: "x"}}, InvalidInput, "names must be strings"),
        ({"embedding": unit(768), "tenant": ""}, InvalidInput, "tenant must not be empty"),
        ({"embedding": unit(768), "tenant": "   "}, InvalidInput, "tenant must not be empty"),
        ({"embedding": unit(768), "tenant": None}, InvalidInput, "tenant is required"),
        ({"embedding": unit(768), "tenant": "a\x00b"}, InvalidInput, "control characters"),
        ({"embedding": unit(768), "tenant": "\ud800"}, InvalidInput, "lone surrogate"),
        ({"embedding": unit(768), "category": "shoes\udfff"}, InvalidInput, "lone surrogate"),
        ({"embedding": unit(768), "product_id": "x" * 1001}, InvalidInput, "1001 characters"),
        ({}, InvalidInput, "needs an image"),
        ({"image": "/nonexistent/shoe.jpg"}, InvalidImage, "no such image file"),
        ({"image": b""}, EmptyImage, "empty"),
        ({"image": b"GIF89a this is not really a gif"}, UnsupportedImage, "image"),
        ({"image": b"%PDF-1.4 hello"}, UnsupportedImage, "not a recognised image format"),
        ({"image": 12345}, InvalidInput, "path, bytes or a binary file object"),
        ({"image": io.StringIO("text")}, InvalidInput, "text mode"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    catalog: Catalog, kwargs: dict, error: type, message: str
) -> None:
    args = {"tenant": "acme", "product_id": "sku-1", **kwargs}
    before = counts(catalog)
    with pytest.raises(error, match=message):
        catalog.add(**args)
    assert counts(catalog) == before


def test_unreadable_directory_and_truncated_png(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="is a directory"):
        catalog.add(image=tmp_path, tenant="acme", product_id="p")
    truncated = image_bytes(7, size=(64, 64))[:-40]
    with pytest.raises(UnsupportedImage, match="corrupt PNG"):
        catalog.add(image=truncated, tenant="acme", product_id="p")
    assert counts(catalog)["images"] == 0


def test_byte_and_pixel_limits(database_url: str) -> None:
    settings = Settings(max_image_bytes=2000, max_image_pixels=100 * 100)
    with Catalog.open(database_url, settings=settings) as catalog:
        with pytest.raises(ImageTooLarge, match="2000-byte limit"):
            catalog.add(image=image_bytes(1, size=(90, 90)), tenant="acme", product_id="p")
        with pytest.raises(ImageTooLarge, match="pixel limit"):
            catalog.add(image=solid_png(101, 100), tenant="acme", product_id="p")
        assert counts(catalog)["images"] == 0


def solid_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, "PNG")
    return buf.getvalue()


def test_add_many_writes_all_rows_in_order(catalog: Catalog) -> None:
    rows = [
        {
            "embedding": unit(768, i),
            "tenant": "acme",
            "product_id": f"sku-{i}",
            "category": "shoes",
            "price": i,
        }
        for i in range(50)
    ]
    rows.append({"image": image_bytes(99), "tenant": "acme", "product_id": "sku-img"})
    ids = catalog.add_many(rows)
    assert len(ids) == 51 and len(set(ids)) == 51
    assert catalog.get(ids[7]).product_id == "sku-7"
    assert catalog.get(ids[-1]).state == "pending"
    assert counts(catalog) == {"products": 51, "images": 51, "embeddings": 50}


def test_add_many_deduplicates_within_the_call_and_against_stored(catalog: Catalog) -> None:
    stored = catalog.add(image=image_bytes(1), tenant="acme", product_id="p1")
    ids = catalog.add_many(
        [
            {"image": image_bytes(1), "tenant": "acme", "product_id": "p1"},
            {"image": image_bytes(2), "tenant": "acme", "product_id": "p2"},
            {"image": image_bytes(2), "tenant": "acme", "product_id": "p2"},
        ]
    )
    assert ids[0] == stored
    assert ids[1] == ids[2] != stored
    assert counts(catalog)["images"] == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"embedding": unit(3)}, "row 2: embedding has 3 dimensions"),
        ({"embedding": unit(768), "colour": "red"}, "row 2: unknown keys \\['colour'\\]"),
        ({"embedding": unit(768), "price": -5}, "row 2: price must not be negative"),
        ({"image": b"not an image"}, "row 2: not a recognised image format"),
    ],
)
def test_add_many_one_bad_row_fails_whole_call(catalog: Catalog, bad: dict, message: str) -> None:
    rows = [{"embedding": unit(768, i), "tenant": "acme", "product_id": f"ok-{i}"} for i in range(2)]
    rows.append({"tenant": "acme", "product_id": "bad", **bad})
    rows.append({"embedding": unit(768, 9), "tenant": "acme", "product_id": "ok-9"})
    with pytest.raises(InvalidInput, match=message):
        catalog.add_many(rows)
    assert counts(catalog) == {"products": 0, "images": 0, "embeddings": 0}


def test_rows_of_one_product_merge_and_disagreeing_rows_are_named(catalog: Catalog) -> None:
    """Rows of a batch that name one product merge (each gives what it gives); two that give one
    of its fields different values fail the batch naming both, with nothing written."""
    same = {"tenant": "acme", "product_id": "shirt", "category": "tops"}
    catalog.add_many(
        [
            {**same, "embedding": unit(768, 1), "price": "19.90", "attributes": {"color": "red"}},
            {
                **same,
                "embedding": unit(768, 2),
                "price": 19.9,
                "currency": "EUR",
                "attributes": {"size": "M"},
            },
        ]
    )
    with catalog.engine.connect() as conn:
        product = conn.execute(
            text("SELECT category, price, currency, attributes FROM imgsearch.products")
        ).one()
    assert tuple(product) == ("tops", Decimal("19.9"), "EUR", {"color": "red", "size": "M"})
    disagreeing = [
        ({"price": 24}, "row 2: price of product 'shoe' of tenant 'acme' is 24 here, but 9.5 in row 0"),
        (
            {"category": "boots"},
            "row 2: category of product 'shoe' of tenant 'acme' is \"boots\" here, but \"shoes\" in row 0",
        ),
        (
            {"attributes": {"color": "blue"}},
            "row 2: attributes.color of product 'shoe' of tenant 'acme' is \"blue\" here, but \"red\" in row 0",
        ),
    ]
    for change, message in disagreeing:
        shoe = {
            "tenant": "acme",
            "product_id": "shoe",
            "category": "shoes",
            "price": 9.5,
            "attributes": {"color": "red"},
        }
        rows = [
            {**shoe, "embedding": unit(768, 3)},
            {"tenant": "acme", "product_id": "other", "embedding": unit(768, 4)},
            {**shoe, **change, "embedding": unit(768, 5)},
        ]
        with pytest.raises(InvalidInput) as raised:
            catalog.add_many(rows)
        assert str(raised.value) == message and raised.value.index == 2
    assert counts(catalog) == {"products": 1, "images": 2, "embeddings": 2}


def test_add_many_rejects_non_mapping_rows(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput, match="row 0: a row must be a mapping"):
        catalog.add_many([("acme", "sku")])  # type: ignore[list-item]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_strings_are_stored_verbatim(catalog: Catalog, evil: str) -> None:
    image_id = catalog.add(
        embedding=unit(768), tenant=evil, product_id=evil, category=evil, attributes={evil: evil}
    )
    record = catalog.get(image_id)
    assert (record.tenant, record.product_id, record.category) == (evil, evil, evil)
    assert record.attributes == {evil: evil}
    assert counts(catalog)["images"] == 1


def test_get_unknown_id_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="no image with id 424242"):
        catalog.get(424242)
    with pytest.raises(NotFound):
        catalog.get("1; DROP TABLE x")  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no image with id 1180591620717411303424"):
        catalog.get(2**70)  # past bigint: no row can have it
    with pytest.raises(NotFound):
        catalog.get(-1)


def test_get_with_a_tenant_postgresql_cannot_receive(catalog: Catalog) -> None:
    image_id = catalog.add(embedding=unit(768), tenant="acme", product_id="sku-1")
    with pytest.raises(InvalidInput, match="control characters"):
        catalog.get(image_id, tenant="ac\x00me")
    with pytest.raises(InvalidInput, match="lone surrogate"):
        catalog.get(image_id, tenant="\ud800")


def test_database_constraints_back_the_validation(catalog: Catalog) -> None:
    """Writes that bypass the library still can't store a negative price or a wrong-size vector."""
    from sqlalchemy.exc import DataError, IntegrityError

    image_id = catalog.add(embedding=unit(768), tenant="acme", product_id="sku-1")
    with pytest.raises(IntegrityError), catalog.engine.begin() as conn:
        conn.execute(text("UPDATE imgsearch.products SET price = -1"))
    with pytest.raises(DataError, match="expected 768 dimensions"), catalog.engine.begin() as conn:
        conn.execute(
            text("UPDATE imgsearch.embeddings SET embedding = '[1,2,3]' WHERE image_id = :id"),
            {"id": image_id},
        )


def test_categories_count_findable_products_only(catalog: Catalog) -> None:
    """A product with no embedded image can't be found: its category isn't offered until it has one."""
    catalog.add(image=image_bytes(1), tenant="acme", product_id="waiting", category="hats")
    catalog.add(embedding=unit(768, 1), tenant="acme", product_id="a", category="shoes")
    ready = catalog.add(embedding=unit(768, 2), tenant="acme", product_id="b", category="shoes")
    catalog.add(embedding=unit(768, 3), tenant="acme", product_id="c", category="bags")
    assert catalog.categories(tenant="acme") == [("shoes", 2), ("bags", 1)]
    catalog.delete(ready, tenant="acme")  # b keeps its row, with no image left
    assert catalog.categories(tenant="acme") == [("bags", 1), ("shoes", 1)]
