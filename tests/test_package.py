"""The public surface: what `import imgsearch` gives and what it costs."""

from __future__ import annotations

import csv
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
    # the HTTP service, its page, and the command's package
    expected |= {f"imgsearch/server/static/{name}" for name in ("index.html", "app.js", "style.css")}
    expected |= {"imgsearch/server/app.py", "imgsearch/server/routes/search.py", "imgsearch/cli/serve.py"}
    assert expected - shipped == set()
