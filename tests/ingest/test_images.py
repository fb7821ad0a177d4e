"""Image checks at upload (imgsearch/ingest/images.py), in imgsearch's words: the pixel limit past
Pillow's own bomb limit, the aspect ratio the workers would refuse, and a query box outside its
image (issue 42, item 8)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imgsearch import Catalog
from imgsearch.errors import ImageTooLarge, InvalidInput, UnsupportedImage
from imgsearch.ingest import images
from tests.helpers import image_bytes, unit


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def test_an_image_past_pillows_bomb_limit_gets_imgsearchs_message() -> None:
    bomb = png((60000, 60000), "1")  # 3.6 billion pixels: Pillow itself refuses to open it
    for limits in (images.Limits(), images.Limits(max_pixels=1000)):
        with pytest.raises(ImageTooLarge) as raised:
            images.inspect(bomb, limits)
        assert str(raised.value) == f"image is 3600000000 pixels, over the {limits.max_pixels}-pixel limit"
        assert "decompression" not in str(raised.value).lower() and "DOS" not in str(raised.value)


@pytest.mark.parametrize(("size", "ratio"), [((4000, 100), 40), ((20, 800), 40), ((3000, 2), 1500)])
def test_an_aspect_ratio_the_workers_refuse_is_refused_at_upload(
    database_url: str, size: tuple[int, int], ratio: int
) -> None:
    with Catalog.open(database_url) as catalog:
        with pytest.raises(UnsupportedImage, match=f"an aspect ratio of {ratio}:1, beyond the 20:1 limit"):
            catalog.add(image=png(size), tenant="acme", product_id="banner")
        catalog.add(image=png((2000, 100)), tenant="acme", product_id="banner")  # 20:1 is allowed
        with catalog.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM imgsearch.images").scalar() == 1


def test_a_box_outside_the_image_is_named_as_such(database_url: str) -> None:
    picture = image_bytes(1, size=(40, 30))
    for box in ((0, 0, 41, 30), (-1, 0, 10, 10), (10, 10, 5, 20)):
        with pytest.raises(InvalidInput, match="is not a region of the 40x30 image") as raised:
            images.crop(picture, box, images.Limits())
        assert "decode" not in str(raised.value)
    assert Image.open(io.BytesIO(images.crop(picture, (0, 0, 40, 30), images.Limits()))).size == (40, 30)
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="p")
        with pytest.raises(InvalidInput, match="not a region of the 40x30 image"):
            catalog.search(image=picture, box=(0, 0, 100, 100), k=1)
