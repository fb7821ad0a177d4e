"""The public surface: what `import imgsearch` gives and what it costs."""

from __future__ import annotations

import subprocess
import sys

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
