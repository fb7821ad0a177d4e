"""The search page with regions, in a real headless Chromium: a hit matched by a region shows
its box on the card, and "Shop the look" draws the photo's objects, lists each one's results, and
searches an object again when it is clicked. A catalog and server of their own (a region rule is
the catalog's)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from imgsearch import Catalog
from imgsearch.settings import Settings
from imgsearch.work import pipeline
from tests.conftest import new_database
from tests.server.conftest import Api, start_api
from tests.server.test_page import ARTIFACTS
from tests.server.test_page import browser as browser  # its Chromium, launched as it launches it


def scene(names: list[str]) -> bytes:
    """Two bundled product pictures side by side: a shop photo of two products."""
    folder = resources.files("imgsearch.samples") / "images"
    tiles = [Image.open(io.BytesIO((folder / name).read_bytes())).convert("RGB").resize((160, 160)) for name in names]
    photo = Image.new("RGB", (320, 160), (240, 240, 240))
    for i, tile in enumerate(tiles):
        photo.paste(tile, (160 * i, 0))
    out = io.BytesIO()
    photo.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shop(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    url = new_database(server_url, template_db)
    folder = resources.files("imgsearch.samples") / "images"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))[:12]
    with Catalog.open(url, settings=Settings(model=str(tiny_siglip), device="cpu")) as catalog:
        catalog.regions.set(grid=2)
        catalog.add_many(
            {"image": scene(names[i : i + 2]), "tenant": "looks", "product_id": f"scene-{i}", "category": "scenes"}
            for i in range(0, len(names), 2)
        )
        pipeline.drain(
            catalog.engine, lambda model: catalog.embedder, batch_size=8, lease_seconds=60,
            downloads=catalog.settings.downloads(), progress=False,
        )  # fmt: skip
    # no margin: the random tiny model's regions then match some queries (the default handicaps
    # them past its near-equal whole images)
    api = start_api(url, tiny_siglip, tmp_path_factory.mktemp("page-regions"), IMGSEARCH_REGION_MARGIN="0")
    photos = tmp_path_factory.mktemp("photos")
    (photos / "look.png").write_bytes(scene([names[1], names[4]]))
    try:
        yield {"api": api, "key": api.key("looks"), "photo": photos / "look.png"}
    finally:
        api.stop()


@pytest.fixture
def page(browser: Browser, shop: dict[str, Any]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(shop["api"].url + "/")
    opened.fill("input[type=password]", shop["key"])
    opened.press("input[type=password]", "Enter")
    expect(opened.locator("#key-state")).to_have_text("Key in use for this tab.")
    yield opened
    assert errors == [], "no script error"
    context.close()


def test_a_card_matched_by_a_region_shows_its_box(page: Page, shop: dict[str, Any]) -> None:
    api: Api = shop["api"]
    with api.client(shop["key"]) as client:
        expected = client.post(
            "/v1/search/image",
            files={"file": ("look.png", shop["photo"].read_bytes())},
            data={"k": "24", "group_by_product": "true"},
        ).json()["hits"]
    boxed = [h for h in expected if h["region"] is not None]
    assert boxed, "some hit matched by a region"
    page.set_input_files("#file", str(shop["photo"]))
    expect(page.locator("#query-state")).to_contain_text("for the image look.png")
    card = page.locator(f'#results [data-image-id="{boxed[0]["image_id"]}"]')
    expect(card).to_have_attribute("data-region", ",".join(map(str, boxed[0]["region"])))
    mark = card.locator(".matched")
    expect(mark).to_be_visible()
    picture, drawn = card.locator(".thumb img").bounding_box(), mark.bounding_box()
    assert picture is not None and drawn is not None
    # inside the picture, about the share of it the box covers (the scenes are 320 x 160)
    x0, y0, x1, y1 = boxed[0]["region"]
    assert drawn["width"] == pytest.approx(picture["width"] * (x1 - x0) / 320, abs=4)
    assert drawn["x"] == pytest.approx(picture["x"] + picture["width"] * x0 / 320, abs=4)
    assert drawn["height"] == pytest.approx(picture["height"] * (y1 - y0) / 160, abs=4)
    assert drawn["y"] == pytest.approx(picture["y"] + picture["height"] * y0 / 160, abs=4)
    whole = [h for h in expected if h["region"] is None]
    if whole:
        expect(page.locator(f'#results [data-image-id="{whole[0]["image_id"]}"] .matched')).to_be_hidden()
    page.screenshot(path=ARTIFACTS / "page-region-hits.png", full_page=True)


def test_shop_the_look_shows_each_object_and_searches_it_again(page: Page, shop: dict[str, Any]) -> None:
    api: Api = shop["api"]
    page.set_input_files("#file", str(shop["photo"]))
    expect(page.locator("#query-state")).to_contain_text("for the image look.png")
    page.click("#look")  # a hurried person clicks at once
    expect(page.locator("#query-state")).to_contain_text("5 objects in the image look.png")
    expect(page.locator(".look-box")).to_have_count(5)
    expect(page.locator("#looks .grid")).to_have_count(5)
    with api.client(shop["key"]) as client:
        objects = client.post(
            "/v1/search/look", files={"file": ("look.png", shop["photo"].read_bytes())}, data={"k": "12"}
        ).json()["objects"]
    shown = page.locator("#looks .grid").evaluate_all("grids => grids.map(g => g.dataset.box)")
    assert shown == [",".join(map(str, o["box"])) for o in objects]
    first = page.locator("#looks .grid").first.locator("[data-image-id]")
    expect(first).to_have_count(len(objects[0]["hits"]))
    page.screenshot(path=ARTIFACTS / "page-shop-the-look.png", full_page=True)
    page.locator(".look-box").nth(1).click()
    box = objects[1]["box"]
    expect(page.locator("#query-state")).to_contain_text(f"(region {', '.join(map(str, box))})")
    expect(page.locator(".look-box")).to_have_count(0)
    expect(page.locator("#looks")).to_be_hidden()
    with api.client(shop["key"]) as client:
        again = client.post(
            "/v1/search/image",
            files={"file": ("look.png", shop["photo"].read_bytes())},
            data={"k": "24", "box": ",".join(map(str, box)), "group_by_product": "true"},  # as the page asks
        ).json()["hits"]
    expect(page.locator("#results [data-image-id]")).to_have_count(len(again))
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#results [data-image-id]')].map(e => Number(e.dataset.imageId)).join() === ids.join()",
        arg=[hit["image_id"] for hit in again],
    )
    assert re.search(r"region \d+, \d+, \d+, \d+", page.locator("#region-state").inner_text())
