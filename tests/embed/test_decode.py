"""Real-upload decoding: orientation, colour modes, frames, aspect policy, and each kind of bad image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgsearch.embed.decode import DecodeOptions, decode
from imgsearch.errors import EmptyImage, ImageTooLarge, UnsupportedImage
from imgsearch.ingest.images import Limits


def save(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20), "red")
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    decoded = decode(save(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 60)
    top = np.asarray(decoded)[2, 10]
    assert top[2] > 200 and top[0] < 60, "the blue strip ends up on top after rotating"


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode(save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert decoded.mode == "RGB"
    r, g, b = np.asarray(decoded)[8, 8]
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_white(mode: str) -> None:
    image = Image.new(mode, (10, 10), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    decoded = decode(save(image))
    assert decoded.mode == "RGB"
    assert tuple(np.asarray(decoded)[5, 5]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    decoded = decode(save(image, transparency=0))
    pixels = np.asarray(decoded)
    assert tuple(pixels[5, 5]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (255, 0, 0)


def test_sixteen_bit_grayscale_keeps_its_range() -> None:
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    decoded = decode(save(image))
    pixels = np.asarray(decoded)[..., 0]
    assert decoded.mode == "RGB"
    assert pixels.min() == 0 and pixels.max() == 255  # not clipped to white
    assert len(np.unique(pixels)) > 200


def test_grayscale_and_bilevel_become_rgb() -> None:
    assert decode(save(Image.new("L", (8, 8), 128))).mode == "RGB"
    assert decode(save(Image.new("1", (8, 8), 1))).mode == "RGB"


def test_animated_image_uses_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "blue", "green")]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    r, g, b = np.asarray(decode(data))[6, 6]
    assert r > 200 and g < 50 and b < 50


def test_pad_policy_makes_square_on_white() -> None:
    decoded = decode(save(Image.new("RGB", (40, 20), "black")), DecodeOptions(aspect="pad"))
    assert decoded.size == (40, 40)
    pixels = np.asarray(decoded)
    assert tuple(pixels[2, 20]) == (255, 255, 255) and tuple(pixels[20, 20]) == (0, 0, 0)
    assert decode(save(Image.new("RGB", (40, 20), "black"))).size == (40, 20)


def test_bad_images_raise_typed_errors() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    good = save(Image.fromarray(noise), "JPEG")
    with pytest.raises(EmptyImage):
        decode(b"")
    with pytest.raises(UnsupportedImage, match="cannot decode JPEG \\(256x256\\)"):
        decode(good[: len(good) * 2 // 3])
    with pytest.raises(UnsupportedImage, match="not a recognised image format"):
        decode(b"<html>not an image</html>")
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        decode(save(Image.new("L", (5000, 5000))), DecodeOptions(limits=Limits(max_pixels=10_000_000 // 2)))
    with pytest.raises(ImageTooLarge, match="byte limit"):
        decode(good, DecodeOptions(limits=Limits(max_bytes=100)))
    with pytest.raises(UnsupportedImage, match="aspect ratio of 50:1"):
        decode(save(Image.new("RGB", (1000, 20))))


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    # a PNG that claims 60000x60000 pixels: refused from its header, long before any allocation
    bomb = save(Image.new("1", (60000, 60000)))
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLarge, match="3600000000 pixels"):
        decode(bomb)
