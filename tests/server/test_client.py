"""A strict TypeScript client generated from the live server's /openapi.json (openapi-typescript and
openapi-fetch, as a shop's Node backend makes one) compiles with ``tsc --strict`` and works: each
call gives only the fields it means (a field with a default is optional), and reads typed answers.
The npm packages are pinned in tests/server/client/package-lock.json; ``make test`` installs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.server.conftest import Api

CLIENT = Path(__file__).parent / "client"
MODULES = CLIENT / "node_modules"


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_strict_typescript_client_compiles_and_works(api: Api, tmp_path: Path) -> None:
    assert (MODULES / ".bin" / "tsc").exists(), "run `npm ci --prefix tests/server/client` (make test does)"
    for name in ("client.ts", "checks.ts", "tsconfig.json", "package.json"):
        shutil.copy(CLIENT / name, tmp_path / name)
    options = json.loads((CLIENT / "tsconfig.json").read_text())["compilerOptions"]
    assert options["strict"] and "skipLibCheck" not in options  # the generated api.d.ts is checked too
    (tmp_path / "node_modules").symlink_to(MODULES)
    bin_ = MODULES / ".bin"
    run([str(bin_ / "openapi-typescript"), f"{api.url}/openapi.json", "-o", "api.d.ts"], tmp_path)  # defaults
    # strict, exactOptionalPropertyTypes; checks.ts's @ts-expect-error lines are each an error found
    run([str(bin_ / "tsc"), "-p", "."], tmp_path)
    checks = (tmp_path / "checks.ts").read_text()
    for expected, error in (
        ("an image by URL without its product_id", "Property 'product_id' is missing"),
        ("an embedding of words", "Type 'string' is not assignable to type 'number'"),
    ):
        line = f"// @ts-expect-error: {expected}\n"
        assert line in checks
        (tmp_path / "checks.ts").write_text(checks.replace(line, ""))
        compiled = subprocess.run([str(bin_ / "tsc"), "-p", "."], cwd=tmp_path, capture_output=True, text=True)
        assert compiled.returncode != 0 and error in compiled.stdout, compiled.stdout
    (tmp_path / "checks.ts").write_text(checks)

    dim = embedding_dim(api)
    tenant = f"ts-{tmp_path.name[-8:]}"
    out = json.loads(run(["node", "out/client.js", api.url, api.key(tenant), str(dim)], tmp_path))
    first, second = out["ids"]
    assert [product for product, _ in out["hits"]] == ["sku-1", "sku-2"]
    assert out["hits"][0][1] > out["hits"][1][1]
    assert out["cheap"] == ["sku-1"]  # price_max 30: sku-2 costs 35.50
    assert out["changed"] is True and out["category"] == "shoes"
    assert out["problem"] == [404, "/problems/not-found", "no image with id 999999999"]
    assert out["webhook"] == [True, [["image.ready", "image.failed"]]]
    assert second > first


def embedding_dim(api: Api) -> int:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    vector = schema["components"]["schemas"]["UploadItem"]["properties"]["embedding"]["anyOf"][0]
    return int(vector["minItems"])
