"""Near-duplicates: the perceptual hash, the upload policies and the sweep, against a real
database. Embeddings are given by hand where a test needs to know the distances."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text, update

from imgsearch import Catalog, InvalidInput
from imgsearch.db.models import Image as ImageRow
from imgsearch.errors import DuplicateImage, InvalidQuery
from imgsearch.ingest import images
from imgsearch.samples.edits import EDITS, near_duplicate_set, original
from imgsearch.settings import Settings
from tests.helpers import run_cli

SAMPLES = Path(__file__).parents[2] / "imgsearch" / "samples" / "images"
MODEL = "google/siglip-base-patch16-224"  # 768-d; vectors only, the weights are never loaded
LIMITS = images.Limits()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg(data: bytes, quality: int = 70, scale: float = 1.0) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def unit(axis: int, tilt: float = 0.0) -> list[float]:
    """A unit vector on ``axis``, tilted toward axis 767 by ``tilt`` radians: two of them on the
    same axis lie 1 - cos(difference of tilts) apart."""
    v = np.zeros(768)
    v[axis] = np.cos(tilt)
    v[767] = np.sin(tilt)
    return v.tolist()


def test_hash_is_imagehash_phash() -> None:
    for item in itertools.islice(near_duplicate_set(4, seed=3), 24):
        expected = imagehash.phash(Image.open(io.BytesIO(item.data)))
        ours = images.perceptual_hash(item.data, LIMITS)
        assert ours == "".join("1" if bit else "0" for bit in expected.hash.ravel()), item.name
    # a large JPEG is decoded at a reduced scale: the hash stays within a bit or two of the full decode
    big = jpeg(png(original(1).resize((1800, 1800))), quality=92)
    full = "".join("1" if b else "0" for b in imagehash.phash(Image.open(io.BytesIO(big))).hash.ravel())
    assert images.hamming(images.perceptual_hash(big, LIMITS), full) <= 2


def test_hash_of_copies_is_close_and_of_distinct_pictures_far() -> None:
    data = (SAMPLES / "mug-red.png").read_bytes()
    h = images.perceptual_hash(data, LIMITS)
    assert len(h) == 64 and set(h) <= {"0", "1"}
    assert images.hamming(h, images.perceptual_hash(jpeg(data, 60), LIMITS)) <= 2
    assert images.hamming(h, images.perceptual_hash(jpeg(data, 85, scale=0.5), LIMITS)) <= 4
    photos = [images.perceptual_hash(png(original(i)), LIMITS) for i in (1, 3, 5, 7)]
    assert min(images.hamming(a, b) for a, b in itertools.combinations(photos, 2)) > 10
    with pytest.raises(InvalidInput, match="not a recognised image"):
        images.perceptual_hash(b"not an image", LIMITS)


@pytest.fixture
def catalog(database_url: str) -> Catalog:
    with Catalog.open(database_url, model=MODEL, settings=Settings(model=MODEL)) as catalog:
        yield catalog


MUG = (SAMPLES / "mug-red.png").read_bytes()
MUG_COPY = jpeg(MUG, 70)  # re-encoded: a few bits of hash apart


def stored(catalog: Catalog, tenant: str = "shop") -> list[tuple[int, str | None, int | None]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            select(ImageRow.id, ImageRow.phash, ImageRow.duplicate_of)
            .where(ImageRow.tenant == tenant)
            .order_by("id")
        )
        return [(r.id, r.phash, r.duplicate_of) for r in rows]


def test_upload_stores_the_hash(catalog: Catalog) -> None:
    image_id = catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    assert stored(catalog) == [(image_id, images.perceptual_hash(MUG, LIMITS), None)]


def test_reject_refuses_a_copy_of_another_product_and_writes_nothing(catalog: Catalog) -> None:
    original_id = catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    with pytest.raises(DuplicateImage, match=rf"near-copy of image {original_id} of product 'A'") as caught:
        catalog.add(MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.1), on_duplicate="reject")
    assert caught.value.image_id == original_id and caught.value.product_id == "A"
    assert caught.value.hamming <= 4 and caught.value.distance == pytest.approx(1 - np.cos(0.1), abs=1e-4)
    assert [r[0] for r in stored(catalog)] == [original_id]
    with catalog.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM imgsearch.products WHERE product_id = 'B'")).scalar() == 0
        )
    # the same product may have near-copies (another shot), and "keep" stores any copy
    same = catalog.add(MUG_COPY, tenant="shop", product_id="A", embedding=unit(0, 0.1), on_duplicate="reject")
    kept = catalog.add(jpeg(MUG, 50), tenant="shop", product_id="C", embedding=unit(0, 0.1))
    assert len({original_id, same, kept}) == 3


def test_hash_close_but_embedding_far_is_not_a_duplicate(catalog: Catalog) -> None:
    catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    # the same picture's hash, but an embedding 0.2 away (max_distance is 0.1): a distinct product
    image_id = catalog.add(
        MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.65), on_duplicate="reject"
    )
    assert image_id in [r[0] for r in stored(catalog)]


def test_link_records_the_original(catalog: Catalog) -> None:
    original_id = catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    copy_id = catalog.add(
        MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.1), on_duplicate="link"
    )
    assert dict((i, of) for i, _, of in stored(catalog)) == {original_id: None, copy_id: original_id}
    assert catalog.get(copy_id).duplicate_of == original_id
    catalog.delete(original_id)  # deleting the original clears the link, not the copy
    assert [(i, of) for i, _, of in stored(catalog)] == [(copy_id, None)]


def test_other_tenants_images_are_not_duplicates(catalog: Catalog) -> None:
    catalog.add(MUG, tenant="other", product_id="A", embedding=unit(0))
    catalog.add(MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.1), on_duplicate="reject")
    assert len(stored(catalog, "shop")) == 1


def test_rows_of_one_call_are_checked_against_each_other(catalog: Catalog) -> None:
    rows = [
        {"image": MUG, "tenant": "shop", "product_id": "A", "embedding": unit(0)},
        {
            "image": (SAMPLES / "lamp-blue.png").read_bytes(),
            "tenant": "shop",
            "product_id": "L",
            "embedding": unit(5),
        },
        {"image": MUG_COPY, "tenant": "shop", "product_id": "B", "embedding": unit(0, 0.1)},
    ]
    with pytest.raises(
        DuplicateImage, match=r"row 2: the image is a near-copy of row 0 of product 'A'"
    ) as caught:
        catalog.add_many(rows, on_duplicate="reject")
    assert caught.value.index == 2
    assert (caught.value.row, caught.value.image_id, caught.value.product_id) == (0, None, "A")
    assert stored(catalog) == []
    ids = catalog.add_many(rows, on_duplicate="link")
    assert [of for _, _, of in stored(catalog)] == [None, None, ids[0]]


def test_policy_and_limits_are_checked(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput, match="on_duplicate must be one of keep, link, reject, got 'drop'"):
        catalog.add(MUG, tenant="shop", product_id="A", on_duplicate="drop")  # type: ignore[arg-type]
    with pytest.raises(
        InvalidQuery, match=r"^upload: on_duplicate='reject' needs the image's bytes, and this"
    ):
        catalog.add("https://example.com/a.jpg", tenant="shop", product_id="A", on_duplicate="reject")
    # a batch names the row, even a batch of one, as its other errors do
    one = [{"image": "https://example.com/a.jpg", "tenant": "shop", "product_id": "A"}]
    with pytest.raises(InvalidQuery, match=r"^row 0: on_duplicate='link' needs the image's bytes") as caught:
        catalog.add_many(one, on_duplicate="link")
    assert caught.value.index == 0
    catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    with pytest.raises(DuplicateImage, match=r"^row 0: the image is a near-copy of image") as copied:
        catalog.add_many(
            [{"image": MUG_COPY, "tenant": "shop", "product_id": "B", "embedding": unit(0, 0.1)}],
            on_duplicate="reject",
        )
    assert (copied.value.index, copied.value.row, copied.value.product_id) == (0, None, "A")
    assert copied.value.image_id == stored(catalog)[0][0]
    catalog.delete(copied.value.image_id)
    for bad in (-1, 65, 2.5, True, "3"):
        with pytest.raises(InvalidInput, match="max_hamming must be a whole number of bits"):
            catalog.duplicates("shop", max_hamming=bad)  # type: ignore[arg-type]
    for bad_distance in (-0.1, 3, float("nan"), "0.1"):
        with pytest.raises(InvalidInput, match="max_distance must be a number from 0 to 2"):
            catalog.duplicates("shop", max_distance=bad_distance)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="tenant"):
        catalog.duplicates("")
    assert stored(catalog) == []


def test_sweep_groups_copies_across_products(catalog: Catalog) -> None:
    items = list(near_duplicate_set(6, seed=11, edits=("jpeg", "resize", "watermark")))
    rows = []
    for position, item in enumerate(items):
        # each item its own product; a group's embeddings 0.02 apart, groups on their own axes
        rows.append(
            {
                "image": item.data,
                "tenant": "shop",
                "product_id": item.name,
                "embedding": unit(item.group, 0.2 * (position % 4)),
            }
        )
    ids = catalog.add_many(rows)
    report = catalog.duplicates("shop", max_distance=None)  # the hash alone: checked by brute force
    hashes = [images.perceptual_hash(item.data, LIMITS) for item in items]
    expected_pairs = {
        (ids[a], ids[b])
        for a, b in itertools.combinations(range(len(items)), 2)
        if images.hamming(hashes[a], hashes[b]) <= 10
    }
    found_pairs = {(a, b) for g in report.groups for a, b in itertools.combinations(sorted(g.image_ids), 2)}
    assert {(a, b) for a, b, _, _ in report.pairs} == expected_pairs
    assert expected_pairs <= found_pairs  # groups join the pairs that share an image
    assert report.images == len(items) and report.hash_pairs == len(expected_pairs)
    for group in report.groups:
        first = group.members[0]
        assert first.hamming == 0 and first.distance == 0.0
        for member in group.members:
            assert member.hamming == images.hamming(
                hashes[ids.index(first.image_id)], hashes[ids.index(member.image_id)]
            )

    # confirmed by embedding: tilts 0, 0.2, 0.4, 0.6 rad; within 0.1 only |tilt difference| <= 0.4
    confirmed = catalog.duplicates("shop", max_hamming=10, max_distance=0.1)
    for group in confirmed.groups:  # other originals' embeddings lie on other axes: never confirmed
        assert len({items[ids.index(i)].group for i in group.image_ids}) == 1
    pairs_confirmed = {
        (a, b) for g in confirmed.groups for a, b in itertools.combinations(sorted(g.image_ids), 2)
    }
    strict = {
        (ids[a], ids[b])
        for a, b in itertools.combinations(range(len(items)), 2)
        if images.hamming(hashes[a], hashes[b]) <= 10
        and items[a].group == items[b].group
        and abs(a % 4 - b % 4) * 0.2 <= 0.4 + 1e-9
    }
    assert strict <= pairs_confirmed
    # an originals' copies in one group: all four items of every photo group are found together
    for group_id in range(1, 6, 2):
        members = {ids[i] for i, item in enumerate(items) if item.group == group_id}
        assert any(members <= set(g.image_ids) for g in report.groups)


def test_sweep_hashes_images_uploaded_before_hashes(catalog: Catalog) -> None:
    a = catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    b = catalog.add(MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.05))
    catalog.add(embedding=unit(3), tenant="shop", product_id="V")  # an embedding only: nothing to hash
    with catalog.engine.begin() as conn:
        conn.execute(update(ImageRow).values(phash=None))
    report = catalog.duplicates("shop")
    assert report.hashed_now == 2 and report.unhashed == 1 and report.images == 2
    assert [sorted(g.image_ids) for g in report.groups] == [sorted([a, b])]
    assert all(phash is not None for i, phash, _ in stored(catalog) if i in (a, b))


def test_sweep_leaves_out_pairs_without_embeddings(catalog: Catalog) -> None:
    catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
    catalog.add(MUG_COPY, tenant="shop", product_id="B")  # pending: not embedded yet
    report = catalog.duplicates("shop")
    assert report.groups == [] and report.unconfirmed == 1
    assert len(catalog.duplicates("shop", max_distance=None).groups) == 1


def test_cli_lists_groups_as_csv_and_html(database_url: str, tmp_path: Path) -> None:
    with Catalog.open(database_url, model=MODEL, settings=Settings(model=MODEL)) as catalog:
        a = catalog.add(MUG, tenant="shop", product_id="A", embedding=unit(0))
        b = catalog.add(MUG_COPY, tenant="shop", product_id="B", embedding=unit(0, 0.2))
        catalog.add(
            (SAMPLES / "lamp-blue.png").read_bytes(), tenant="shop", product_id="L", embedding=unit(4)
        )
    env = {"IMGSEARCH_DATABASE_URL": database_url, "IMGSEARCH_MODEL": MODEL}
    out = run_cli("duplicates", "--tenant", "shop", **env)
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["group"], r["image_id"], r["product_id"]) for r in table] == [
        ("1", str(a), "A"),
        ("1", str(b), "B"),
    ]
    assert float(table[1]["distance"]) == pytest.approx(1 - np.cos(0.2), abs=2e-4)
    assert "1 group, 2 images" in out.stderr
    page = tmp_path / "dupes.html"
    out = run_cli("duplicates", "--tenant", "shop", "--html", str(page), **env)
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert html.count("<figure>") == 2 and "data:image/jpeg;base64," in html and "product A" in html
    bad = run_cli("duplicates", "--tenant", "shop", "--max-hamming", "99", **env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("imgsearch: max_hamming")
    assert "Traceback" not in bad.stderr


def test_upload_without_embedding_is_embedded_by_the_check(database_url: str, tiny_siglip: Path) -> None:
    """The check embeds a candidate upload with the catalog's model, and keeps that embedding."""
    with Catalog.open(database_url, model=str(tiny_siglip)) as catalog:
        original_id = catalog.add(MUG, tenant="shop", product_id="A")  # pending: embedded by the check
        with pytest.raises(DuplicateImage, match=f"image {original_id}"):
            catalog.add(MUG_COPY, tenant="shop", product_id="B", on_duplicate="reject")
        linked = catalog.add(MUG_COPY, tenant="shop", product_id="B", on_duplicate="link")
        record = catalog.get(linked)
        assert record.duplicate_of == original_id and record.state == "ready"
        distinct = catalog.add(
            (SAMPLES / "lamp-blue.png").read_bytes(), tenant="shop", product_id="L", on_duplicate="reject"
        )
        assert catalog.get(distinct).state == "pending"  # no hash candidate: nothing embedded at upload
    assert set(EDITS) == {"resize", "jpeg", "crop10", "watermark", "colour"}
