"""The public surface: what `import imgsearch` gives and what it costs."""

from __future__ import annotations

import ast
import csv
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import imgsearch
from imgsearch import errors


def test_import_needs_no_torch_and_reads_no_settings() -> None:
    code = (
        "import os, sys; os.environ['IMGSEARCH_DATABASE_URL'] = 'not a url'; import imgsearch; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_exported_names_are_sorted_and_exist() -> None:
    assert imgsearch.__all__ == sorted(imgsearch.__all__)
    assert all(hasattr(imgsearch, name) for name in imgsearch.__all__)


def test_every_error_derives_from_the_base() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(cls, errors.ImgSearchError) for cls in classes)
    assert issubclass(errors.InvalidInput, ValueError)
    assert issubclass(errors.NotFound, LookupError)
    assert not issubclass(errors.TransientError, errors.InvalidInput)
    for name in errors.__all__:
        assert name in errors.__doc__, f"{name} missing from the drawn tree"


def test_the_wheel_ships_the_demo_samples_and_the_migrations(tmp_path: Path) -> None:
    """A wheel install has what `imgsearch demo`, `imgsearch migrate` and `imgsearch serve` read,
    and builds quietly."""
    root = Path(__file__).resolve().parents[1]
    # a copy, so that no earlier build's leftovers (build/lib) end up in this wheel
    source = tmp_path / "source"
    shutil.copytree(
        root,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "test-artifacts"),
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())

    samples = root / "imgsearch" / "samples"
    with (samples / "manifest.csv").open(newline="") as manifest:
        images = [row["image"] for row in csv.DictReader(manifest)]
    queries = [path.relative_to(samples).as_posix() for path in (samples / "queries").glob("*.png")]
    assert images and queries
    expected = {f"imgsearch/samples/{name}" for name in [*images, *queries, "LICENSE", "manifest.csv"]}
    expected |= {
        f"imgsearch/migrations/versions/{path.name}"
        for path in (root / "migrations" / "versions").glob("*.py")
    }
    expected |= {"imgsearch/py.typed", "imgsearch/migrations/script.py.mako", "imgsearch/migrations/env.py"}
    # every module of the package (a subpackage missing from pyproject's list is missing here)
    expected |= {path.relative_to(root).as_posix() for path in (root / "imgsearch").rglob("*.py")}
    # the console's SQL, one file per object (imgsearch.db.definitions)
    sql = root / "imgsearch" / "db" / "sql"
    expected |= {f"imgsearch/db/sql/{path.relative_to(sql).as_posix()}" for path in sql.glob("*/*.sql")}
    assert len(expected) > 60
    # the HTTP service, its page, and the command's package
    expected |= {f"imgsearch/server/static/{name}" for name in ("index.html", "app.js", "style.css")}
    expected |= {"imgsearch/server/app.py", "imgsearch/server/routes/search.py", "imgsearch/cli/serve.py"}
    assert expected - shipped == set()


ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "work", "embed", "db", "search")


def test_the_top_level_keeps_only_the_entry_points_and_the_public_types() -> None:
    """The folders show the data's path; the top level holds the entry points and shared types
    (``context.py``: what the Catalog hands its packages)."""
    top = {path.name for path in (ROOT / "imgsearch").glob("*.py")}
    assert top == {
        "__init__.py",
        "__main__.py",
        "errors.py",
        "settings.py",
        "records.py",
        "catalog.py",
        "context.py",
        "demo.py",
    }
    packages = {path.parent.name for path in (ROOT / "imgsearch").glob("*/__init__.py")}
    assert set(STAGES) | {"quality", "access", "server", "cli", "contrib", "samples"} <= packages


def test_modules_stay_small_and_the_catalog_only_hands_over() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for folder in ("imgsearch", "workers", "tests")
        for path in (ROOT / folder).rglob("*.py")
    }
    assert sizes["imgsearch/catalog.py"] <= 400
    assert {name: lines for name, lines in sizes.items() if lines > 500} == {}


def test_tests_and_benchmarks_mirror_the_packages() -> None:
    for stage in (*STAGES, "quality", "access"):
        assert (ROOT / "tests" / stage).is_dir(), f"tests/{stage}/ is missing"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    scripts = [p for p in (ROOT / "bench").glob("*/*.py") if not p.name.startswith("_")]  # _x.py: helpers
    assert scripts
    for script in scripts:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        named = re.search(r"The figure it produces: docs/(\w+\.md)", doc)
        assert named, f"{script.relative_to(ROOT)} doesn't name the figure it produces"
        assert f"bench/{script.parent.name}/{script.name}" in page or named.group(1) != "benchmarks.md", (
            script
        )


def _top_level_names(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def test_benchmarks_use_only_names_their_helpers_define() -> None:
    # the scripts import each other and bench/_*.py by path (sys.path), which neither mypy nor
    # ruff follows: a helper that moved left `search.stored_catalog` failing only when run
    bench = ROOT / "bench"
    scripts = sorted(bench.glob("*.py")) + sorted(bench.glob("*/*.py"))
    checked = 0
    for script in scripts:
        tree = ast.parse(script.read_text())
        local = {p.stem: p for p in (*bench.glob("*.py"), *script.parent.glob("*.py"))}
        aliases: dict[str, Path] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local:
                defined = _top_level_names(local[node.module])
                for alias in node.names:
                    assert alias.name in defined, f"{script.relative_to(ROOT)}: {node.module} has no {alias.name}"
                    checked += 1
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: local[a.name] for a in node.names if a.name in local})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                helper = aliases[node.value.id]
                assert node.attr in _top_level_names(helper), (
                    f"{script.relative_to(ROOT)}: {helper.relative_to(ROOT)} has no {node.attr}"
                )
                checked += 1
    assert checked > 20  # the scripts do share helpers: the check saw them
