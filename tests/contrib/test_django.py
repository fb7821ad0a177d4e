"""The Django integration, run by Django's own test runner (tests/django_project) against the
session's embedded PostgreSQL: the runner creates its test database there, `migrate` runs
imgsearch's Alembic migrations on it, and the test cases search through the QuerySet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parents[1] / "django_project"


def test_django_test_project_passes(server_url: str, tiny_siglip: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSEARCH_", "DJANGO_"))}
    env.update(
        IMGSEARCH_DATABASE_URL=server_url,
        IMGSEARCH_MODEL=str(tiny_siglip),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    run = subprocess.run(
        [sys.executable, "manage.py", "test", "searchtests", "--noinput", "-v", "2"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Ran 9 tests" in report and "\nOK" in report, report
    assert "Applying imgsearch.0001_initial... OK" in report  # migrate ran imgsearch's schema
    assert "skipped" not in report
