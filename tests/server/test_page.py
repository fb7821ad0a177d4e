"""The search page at ``/`` in a real headless Chromium (Debian's, driven by Playwright): a key
kept in the tab, text search, image search by file, a filter, "more like this", paging, the
catalog's status, and a product id with HTML in it shown as text. Screenshots go to
``test-artifacts/`` (``IMGSEARCH_TEST_ARTIFACTS``)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers import image_bytes, serve_files
from tests.server.conftest import Api, start_api

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright can't download its own browser here
ARTIFACTS = Path(os.environ.get("IMGSEARCH_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
XSS = '<img src=x onerror="window.__xss=1">'
XSS_CATEGORY = "<script>window.__xss=2</script>"


def samples() -> list[dict[str, str]]:
    folder = resources.files("imgsearch.samples")
    with (folder / "manifest.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def shop(api: Api, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tenant with the 36 bundled product pictures, one product whose id and category are HTML,
    and one image whose URL answers 404; uploaded through the API, embedded by a worker."""
    tenant = "page-shop"
    key = api.key(tenant)
    folder = resources.files("imgsearch.samples")
    ids: dict[str, int] = {}
    with api.client(key) as client:
        for row in samples():
            picture = (folder / row["image"]).read_bytes()
            form = {"product_id": row["product_id"], "category": row["category"], "price": row["price"]}
            response = client.post("/v1/images", files={"file": (row["image"], picture)}, data=form)
            assert response.status_code == 201, response.text
            ids[row["product_id"]] = response.json()["ids"][0]
        xss_picture = image_bytes(77, size=(64, 64))
        response = client.post(
            "/v1/images",
            files={"file": ("x.png", xss_picture)},
            data={"product_id": XSS, "category": XSS_CATEGORY, "price": "1"},
        )
        assert response.status_code == 201, response.text
        empty = tmp_path_factory.mktemp("nothing-served")
        with serve_files(empty) as server:
            response = client.post(
                "/v1/images", json={"items": [{"url": f"{server.url}/gone.png", "product_id": "gone"}]}
            )
            failed_id = response.json()["ids"][0]
            drained = subprocess.run(
                [sys.executable, "-m", "imgsearch", "worker", "--drain"],
                env=api.env,
                capture_output=True,
                text=True,
                timeout=300,
            )
    assert drained.returncode == 0, drained.stderr
    with api.client(key) as client:
        counts = client.get("/v1/status").json()["counts"]
        # the session's server loads its model at its first text query (seconds on a busy box): done
        # here, whichever test runs first; a fresh server's first search is tested on its own below
        assert client.post("/v1/search", json={"text": "warm up", "k": 1}).status_code == 200
    assert (counts["ready"], counts["failed"]) == (37, 1), drained.stdout
    return {"key": key, "ids": ids, "failed_id": failed_id, "folder": folder}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install -y chromium); .ci/run does"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, api: Api, shop: dict[str, Any]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    opened.goto(api.url + "/")
    opened.fill("input[type=password]", shop["key"])
    opened.press("input[type=password]", "Enter")
    expect(opened.locator("#key-state")).to_have_text("Key in use for this tab.")
    yield opened
    assert errors == [], "no script error, no alert"
    context.close()


def search_text(page: Page, query: str) -> None:
    page.fill("input[type=search]", query)
    page.press("input[type=search]", "Enter")
    expect(page.locator("#query-state")).to_contain_text(f"for “{query}”")


def loaded(page: Page) -> None:
    """Wait until every result's thumbnail is in."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def result_ids(page: Page) -> list[int]:
    return [
        int(v)
        for v in page.locator("#results [data-image-id]").evaluate_all(
            "els => els.map(e => e.dataset.imageId)"
        )
    ]


def test_text_search_shows_results_with_thumbnails(page: Page, shop: dict[str, Any]) -> None:
    search_text(page, "a red mug")
    cards = page.locator("#results [data-image-id]")
    # "mug" is one of the shop's categories: read as a filter, shown as a chip, with the facets
    expect(page.locator("#understood .chip")).to_have_text(["category: mugs ×"])
    expect(cards).to_have_count(6)
    expect(page.locator("#results .category")).to_have_text(["mugs"] * 6)
    expect(page.locator("#query-state")).to_contain_text("Results 1–6 of 6")
    expect(page.locator("#facets-panel")).to_contain_text("mugs6")
    page.locator("#understood .chip").click()  # removed: the words as typed, every product
    expect(cards).to_have_count(24)
    expect(page.locator("#understood")).to_be_hidden()
    expect(page.locator("#query-state")).to_contain_text("Results 1–24 of 37")
    first = cards.first
    expect(first.locator("img")).to_have_attribute("src", re.compile(r"^blob:"))
    loaded(page)
    for field in ("title", "product", "price", "score", "probability", "found-by"):
        expect(first.locator(f".{field}")).not_to_be_empty()
    expect(first.locator(".score")).to_have_text(re.compile(r"^\d{1,3}%$"))
    expect(first.locator(".found-by")).to_have_text("image #1")
    page.screenshot(path=ARTIFACTS / "page-text-search.png", full_page=True)
    assert page.evaluate("sessionStorage.getItem('imgsearch.key')") == shop["key"]
    assert page.locator("input[type=password]").input_value() == "", "the key isn't left in the field"
    page.reload()
    expect(page.locator("#key-state")).to_have_text("Key in use for this tab.")


def test_image_search_by_file(page: Page, shop: dict[str, Any]) -> None:
    picture = Path(str(shop["folder"] / "images" / "cap-blue.png"))
    page.set_input_files("#file", str(picture))
    expect(page.locator("#query-state")).to_contain_text("for the image cap-blue.png")
    expect(page.locator("#query-image")).to_be_visible()
    assert result_ids(page)[0] == shop["ids"]["cap-blue"], "the same picture is nearest"
    expect(page.locator("#results [data-image-id]").first.locator(".score")).to_have_text("100%")
    loaded(page)
    page.screenshot(path=ARTIFACTS / "page-image-search.png", full_page=True)


def test_a_filter_and_more_like_this(page: Page, shop: dict[str, Any]) -> None:
    expect(page.locator("#category option")).to_have_count(8)  # any, 6 sample categories, the HTML one
    search_text(page, "something to drink from")
    page.select_option("#category", "mugs")
    expect(page.locator("#results [data-image-id]")).to_have_count(6)
    expect(page.locator("#results .category")).to_have_text(["mugs"] * 6)
    page.fill("#price-max", "12")
    page.press("#price-max", "Enter")
    expect(page.locator("#results .price")).to_have_count(3)  # mug-red 8.29, mug-white 9.70, mug-blue 11.94
    assert sorted(map(float, page.locator("#results .price").all_inner_texts())) == [8.29, 9.70, 11.94]
    target = result_ids(page)[0]
    page.locator(f'#results [data-image-id="{target}"] .more').click()
    expect(page.locator("#query-state")).to_contain_text(f"more like image {target}")
    expect(page.locator("#results [data-image-id]")).to_have_count(2)  # the other mugs under 12
    assert target not in result_ids(page)
    expect(page.locator("#results .category")).to_have_text(["mugs", "mugs"])


def test_paging(page: Page) -> None:
    page.select_option("#k", "12")
    search_text(page, "product photo")
    first = result_ids(page)
    assert len(first) == 12
    expect(page.locator("#prev")).to_be_disabled()
    page.click("#next")
    expect(page.locator("#query-state")).to_contain_text("Results 13–24")
    second = result_ids(page)
    assert len(second) == 12 and not set(first) & set(second)
    page.click("#next")
    page.click("#next")
    expect(page.locator("#query-state")).to_contain_text("Results 37–37")
    expect(page.locator("#next")).to_be_disabled()
    page.click("#prev")
    page.click("#prev")
    page.click("#prev")
    expect(page.locator("#query-state")).to_contain_text("Results 1–12")
    assert result_ids(page) == first


def test_html_in_a_product_id_is_shown_as_text(page: Page, shop: dict[str, Any]) -> None:
    page.fill("#attributes", "")
    search_text(page, "a thing")
    page.select_option("#k", "48")
    expect(page.locator("#results [data-image-id]")).to_have_count(37)
    product = page.locator("#results .product", has_text="onerror")
    expect(product).to_have_text(XSS)
    expect(page.locator("#results .category", has_text="script")).to_have_text(XSS_CATEGORY)
    expect(page.locator("#category option", has_text="script")).to_have_count(1)
    assert page.evaluate("window.__xss") is None, "no injected script ran"
    assert page.locator("#results img[src=x]").count() == 0 and page.locator("#results script").count() == 0
    page.screenshot(path=ARTIFACTS / "page-xss-as-text.png", full_page=True)


def test_catalog_status_with_failed_images(page: Page, shop: dict[str, Any]) -> None:
    expect(page.locator('#counts dd[data-state="ready"]')).to_have_text("37")
    expect(page.locator('#counts dd[data-state="failed"]')).to_have_text("1")
    failed = page.locator(f'#failed li[data-image-id="{shop["failed_id"]}"]')
    expect(failed).to_contain_text("HTTP 404")
    expect(failed).to_contain_text("of product gone")  # which product, with its picture's place
    expect(failed.locator("img, span")).not_to_have_count(0)


def test_an_admin_key_sees_each_results_shop(browser: Browser, api: Api, shop: dict[str, Any]) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    admin = context.new_page()
    admin.goto(api.url + "/")
    admin.fill("input[type=password]", api.key(admin=True))
    admin.press("input[type=password]", "Enter")
    expect(admin.locator("#key-state")).to_have_text("Key in use for this tab.")
    admin.fill("input[type=search]", "product photo")
    admin.press("input[type=search]", "Enter")
    shops = admin.locator("#results .tenant")
    expect(shops).not_to_have_count(0)
    assert all(shops.all_inner_texts()), "each card names its shop"
    expect(admin.locator("#failed li").first).to_contain_text(re.compile(r"of product .+ of .+: "))
    context.close()


def test_a_shops_key_cards_name_no_shop(page: Page) -> None:
    search_text(page, "product photo")
    expect(page.locator("#results [data-image-id]")).to_have_count(24)
    expect(page.locator("#results .tenant")).to_have_count(0)


def test_errors_are_shown_and_a_phone_gets_one_column(
    browser: Browser, api: Api, shop: dict[str, Any]
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone = context.new_page()
    phone.goto(api.url + "/")
    phone.fill("input[type=password]", "isk_aaaaaaaaaaaa_" + "A" * 43)
    phone.press("input[type=password]", "Enter")
    expect(phone.locator("#error")).to_contain_text("malformed, unknown or revoked")
    expect(phone.locator("#key-state")).to_have_text("Key not accepted.")  # not "Key in use"
    expect(phone.locator("#forget")).to_be_hidden()
    phone.fill("input[type=password]", shop["key"])
    phone.press("input[type=password]", "Enter")
    expect(phone.locator("#key-state")).to_have_text("Key in use for this tab.")
    expect(phone.locator("#error")).to_be_hidden()  # the wrong key's error went with it
    phone.fill("input[type=search]", "a gift for a friend")
    phone.press("input[type=search]", "Enter")
    cards = phone.locator("#results [data-image-id]")
    expect(cards).to_have_count(24)
    phone.screenshot(path=ARTIFACTS / "page-phone.png", full_page=False)
    boxes = [cards.nth(i).bounding_box() for i in range(4)]
    assert all(box is not None and box["x"] + box["width"] <= 390 for box in boxes), "no sideways scrolling"
    phone.fill("#attributes", "colour")
    phone.press("#attributes", "Enter")
    expect(phone.locator("#error")).to_contain_text("name=value pairs")
    phone.fill("#attributes", "")
    phone.fill("#price-min", "9")
    phone.fill("#price-max", "2")
    phone.press("#price-max", "Enter")
    expect(phone.locator("#error")).to_contain_text("price_min 9 is above price_max 2")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=ARTIFACTS / "page-phone.png", full_page=False)
    context.close()


def test_a_region_drawn_on_the_query_image_searches_with_it(
    page: Page, api: Api, shop: dict[str, Any]
) -> None:
    picture = Path(str(shop["folder"] / "images" / "cap-blue.png"))
    page.set_input_files("#file", str(picture))
    expect(page.locator("#query-state")).to_contain_text("for the image cap-blue.png")
    whole = result_ids(page)
    image = page.locator("#query-image")
    expect(image).to_be_visible()
    page.wait_for_function("() => document.getElementById('query-image').naturalWidth > 0")
    frame = image.bounding_box()
    assert frame is not None
    page.mouse.move(frame["x"] + 2, frame["y"] + 2)
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] / 2, frame["y"] + frame["height"] / 2, steps=5)
    page.mouse.up()
    expect(page.locator("#box")).to_be_visible()
    expect(page.locator("#query-state")).to_contain_text("(region ")
    state = page.locator("#region-state").inner_text()
    box = [int(v) for v in re.search(r"region (\d+), (\d+), (\d+), (\d+)", state).groups()]  # type: ignore[union-attr]
    natural = page.evaluate(
        "[document.getElementById('query-image').naturalWidth, document.getElementById('query-image').naturalHeight]"
    )
    assert 0 <= box[0] < box[2] <= natural[0] and 0 <= box[1] < box[3] <= natural[1]
    assert box[2] == pytest.approx(natural[0] / 2, abs=3) and box[3] == pytest.approx(natural[1] / 2, abs=3)
    with api.client(shop["key"]) as client:
        response = client.post(
            "/v1/search/image",
            files={"file": ("cap-blue.png", picture.read_bytes())},
            data={"k": "24", "box": ",".join(map(str, box))},
        )
    assert response.status_code == 200, response.text
    expect(page.locator("#results [data-image-id]").first).to_be_visible()
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#results [data-image-id]')].map(e => Number(e.dataset.imageId)).join() === ids.join()",
        arg=[hit["image_id"] for hit in response.json()["hits"]],
    )
    page.screenshot(path=ARTIFACTS / "page-region-search.png", full_page=True)
    page.click("#whole")
    expect(page.locator("#box")).to_be_hidden()
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#results [data-image-id]')].map(e => Number(e.dataset.imageId)).join() === ids.join()",
        arg=whole,
    )


def test_the_pager_shows_only_with_more_than_a_page(page: Page) -> None:
    expect(page.locator("#pager")).to_be_hidden()  # before any search
    search_text(page, "a gift idea")
    expect(page.locator("#pager")).to_be_visible()


def test_a_failed_search_leaves_no_results_of_the_one_before(page: Page) -> None:
    search_text(page, "a gift idea")
    expect(page.locator("#results [data-image-id]")).to_have_count(24)
    page.fill("#price-min", "9")
    page.fill("#price-max", "2")
    page.press("#price-max", "Enter")  # the server refuses it
    expect(page.locator("#error")).to_contain_text("price_min 9 is above price_max 2")
    expect(page.locator("#query-state")).to_have_text("The search for “a gift idea” failed.")
    expect(page.locator("#results [data-image-id]")).to_have_count(0)
    expect(page.locator("#pager")).to_be_hidden()


def test_a_server_out_of_reach_is_named(page: Page) -> None:
    page.route("**/v1/search", lambda route: route.abort("connectionrefused"))
    page.fill("input[type=search]", "a gift idea")
    page.press("input[type=search]", "Enter")
    expect(page.locator("#error")).to_contain_text("can't be reached")
    expect(page.locator("#error")).to_contain_text("imgsearch serve")


def test_only_the_latest_search_is_shown(page: Page) -> None:
    """Next, Next in a hurry: the answer to the first click comes last, and is not shown."""
    page.select_option("#k", "12")
    search_text(page, "product photo")

    def slow_second_page(route: Any) -> None:
        if '"offset":12' in (route.request.post_data or ""):
            page.wait_for_timeout(1500)
        route.continue_()

    page.route("**/v1/search", slow_second_page)
    page.click("#next")
    page.click("#next")
    expect(page.locator("#query-state")).to_contain_text("Results 25–36")
    page.wait_for_timeout(2000)  # the first click's answer has come by now
    expect(page.locator("#query-state")).to_contain_text("Results 25–36")


def test_the_first_search_of_a_fresh_server_answers(
    browser: Browser, api: Api, shop: dict[str, Any], tmp_path: Path
) -> None:
    """A fresh `imgsearch serve` (no --preload), polled on /healthz until it answers, then the
    page driven as a hurried person does: the key, Enter, a text never searched, Enter, no wait."""
    fresh = start_api(api.database_url, Path(api.env["IMGSEARCH_MODEL"]), tmp_path, ready=False)
    try:
        context = browser.new_context()
        hurried = context.new_page()
        hurried.goto(fresh.url + "/")
        hurried.fill("input[type=password]", shop["key"])
        hurried.press("input[type=password]", "Enter")
        hurried.fill("input[type=search]", f"a text never searched before {uuid.uuid4().hex}")
        hurried.press("input[type=search]", "Enter")
        expect(hurried.locator("#results [data-image-id]")).to_have_count(24, timeout=30_000)
        context.close()
    finally:
        fresh.stop()


def test_the_api_docs_need_no_other_host(browser: Browser, api: Api) -> None:
    """/docs and /redoc load Swagger UI and ReDoc from the server itself: with every request to
    another host blocked, both render the schema (ReDoc still asks for Redocly's logo, which it
    draws in its sidebar; nothing else)."""
    context = browser.new_context()
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(api.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", only_this_server)
    docs = context.new_page()
    docs.goto(api.url + "/docs")
    expect(docs.locator(".swagger-ui .info .title")).to_contain_text("imgsearch")
    expect(docs.locator(".opblock-summary-path", has_text="/v1/search").first).to_be_visible()
    docs.screenshot(path=ARTIFACTS / "docs-offline.png")
    assert elsewhere == [], "Swagger UI asked nothing of another host"
    docs.goto(api.url + "/redoc")
    expect(docs.locator("h1", has_text="imgsearch")).to_be_visible(timeout=15_000)
    assert all(url.startswith("https://cdn.redoc.ly/redoc/logo") for url in elsewhere), elsewhere
    context.close()
