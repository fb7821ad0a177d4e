"""The OpenAPI schema states what the server enforces: read as a client generator reads it, and
fuzzed by Schemathesis against a live server (every operation, every check, 0 failures)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imgsearch.server.schemas import CURRENCY_PATTERN
from tests.conftest import new_database
from tests.helpers import serve_files
from tests.server.conftest import Api, start_api

ROOT = Path(__file__).resolve().parents[2]
FUZZ_EXAMPLES = int(os.environ.get("IMGSEARCH_FUZZ_EXAMPLES", "40"))
FUZZ_SEED = os.environ.get("IMGSEARCH_FUZZ_SEED", "20261124")  # "random" for a new one each run


@pytest.fixture(scope="module")
def fuzzed(
    server_url: str, template_db: str, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """A server of its own (what Schemathesis writes stays in its database), taking image URLs
    from the tests' file server on 127.0.0.1, with its model loaded before the first request."""
    api = start_api(
        new_database(server_url, template_db),
        tiny_siglip,
        tmp_path_factory.mktemp("fuzzed"),
        "--preload",
        IMGSEARCH_DOWNLOAD_ALLOW="127.0.0.1",
        IMGSEARCH_MAX_BATCH_ITEMS="20",
    )
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def schema(fuzzed: Api) -> dict[str, Any]:
    response = httpx.get(f"{fuzzed.url}/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def nulls_defaulted(node: Any, where: str = "") -> list[str]:
    """Where the schema says ``default: null``."""
    found = []
    if isinstance(node, dict):
        if "default" in node and node["default"] is None:
            found.append(where)
        for key, value in node.items():
            found += nulls_defaulted(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += nulls_defaulted(value, f"{where}/{index}")
    return found


def test_optional_fields_have_no_null_default(schema: dict[str, Any]) -> None:
    """openapi-typescript makes a field with a default required: a strict client wouldn't compile."""
    assert nulls_defaulted(schema) == []
    search = schema["components"]["schemas"]["SearchRequest"]
    assert "required" not in search or search["required"] == []


def test_the_schema_states_the_rules(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    paths = schema["paths"]
    upload = components["UploadRequest"]["properties"]["items"]
    assert upload["minItems"] == 1 and upload["maxItems"] == 20  # the server's own limit
    change = components["ProductChange"]  # a PATCH: at least one field
    assert sorted(branch["required"][0] for branch in change["allOf"][0]["anyOf"]) == [
        "attributes",
        "brand",
        "category",
        "currency",
        "description",
        "price",
        "title",
    ]
    name = components["ProductFeedItem"]["properties"]["product_id"]["anyOf"][0]
    assert name["minLength"] == 1 and "\\u0000-\\u001f" in name["pattern"]
    currency = change["properties"]["currency"]["anyOf"][0]
    assert currency["pattern"] == CURRENCY_PATTERN and re.fullmatch(CURRENCY_PATTERN, " eur ")
    price = components["Price"]["anyOf"][0]
    assert (price["minimum"], price["exclusiveMaximum"]) == (0, 9_999_999_999.99995)
    options = components["SearchOptions"]["properties"]
    assert (options["k"]["minimum"], options["k"]["maximum"]) == (1, 1000)
    assert options["offset"]["minimum"] == 0
    queries = components["SearchRequest"]["oneOf"]
    assert sorted(branch["required"][0] for branch in queries) == [
        "image_url",
        "similar_to",
        "similar_to_product",
        "text",
        "vector",
    ]
    assert "Admin keys only" in options["tenant"]["description"]
    for path, method, code in [
        ("/v1/images/{image_id}", "get", "405"),
        ("/v1/images", "post", "409"),
        ("/v1/images", "post", "415"),
        ("/v1/search", "post", "415"),
    ]:
        response = paths[path][method]["responses"][code]
        assert response["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    responses = paths["/v1/search"]["post"]["responses"]
    assert "X-Request-ID" in responses["200"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    assert "Allow" in responses["405"]["headers"]
    thumbnail = paths["/v1/images/{image_id}/thumbnail"]["get"]["responses"]["200"]
    assert (
        thumbnail["content"]["image/jpeg"]["schema"]["format"] == "binary" and "ETag" in thumbnail["headers"]
    )
    assert paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Ready"
    }
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert {"type", "title", "status", "detail", "request_id", "index", "errors"} <= set(
        components["Problem"]["properties"]
    )


def test_schemathesis_finds_no_failure(fuzzed: Api, schema: dict[str, Any], tmp_path: Path) -> None:
    """Every operation, every check, positive and negative data, and the stateful phase (links
    from uploads to reads and deletes), against the schema the server publishes. The rules JSON
    Schema can't state come from tests/server/fuzz_hooks.py; schemathesis.toml names the statuses
    an invalid request may get (413 for a batch over the limit)."""
    image = tmp_path / "query.png"
    Image.new("RGB", (2000, 1500), (200, 80, 40)).save(image)
    key = fuzzed.key("fuzzed")
    with serve_files(tmp_path) as files:
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.server.fuzz_hooks",
            "FUZZ_IMAGE": str(image),
            "FUZZ_IMAGE_URL": f"{files.url}/query.png",
            "PYTHONPATH": str(ROOT),
        }
        seed = [] if FUZZ_SEED == "random" else ["--seed", FUZZ_SEED]
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(ROOT / "tests/server/schemathesis.toml"),
                "run",
                f"{fuzzed.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--max-examples",
                str(FUZZ_EXAMPLES),
                "--workers",
                "1",
                "--no-color",
                "--generation-database",
                "none",
                *seed,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    report = run.stdout + run.stderr
    (ROOT / ".fuzz-report.txt").write_text(report)  # the whole report, for a failure's reproduction
    assert run.returncode == 0, "\n".join(line[:400] for line in report.splitlines())[-20000:]
    count = sum(len(item) for item in schema["paths"].values())
    summary = report.split("API Operations:")[1].split("Test Phases:")[0]
    assert f"Selected: {count}/{count}" in summary and f"Tested: {count}" in summary, summary
    assert "Runtime Error" not in report and "🚫" not in report, report[-20000:]
