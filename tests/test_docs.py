"""The reference pages stay in step with the code: every setting is documented, every link
between the pages points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from imgsearch.settings import Settings

ROOT = Path(__file__).parents[1]


def test_every_setting_is_documented() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"`(IMGSEARCH_[A-Z_]+)`", page))
    for name in Settings.model_fields:
        variable = f"IMGSEARCH_{name.upper()}"
        assert variable in documented or variable in page, f"{variable} is not in docs/settings.md"


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
