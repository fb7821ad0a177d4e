"""A first run that can't lock anyone in (imgsearch/embed/active.py): opening a catalog registers
no model; its first upload, import or model command does; while that model has no embeddings, a
configured IMGSEARCH_MODEL replaces it; after that, a model the catalog has never seen is an error
naming the command that switches, and a model switched from is followed (issue 42, item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from imgsearch import Catalog, ConfigurationError
from imgsearch.db import vector_index
from imgsearch.settings import Settings
from imgsearch.work import reembed
from tests.helpers import clean_environment, image_bytes, run_cli, unit

HUB_MODEL = "google/siglip-base-patch16-224"  # the default: offline here, it can't load


def registered(catalog: Catalog) -> list[tuple[str, bool]]:
    with catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT name, active FROM imgsearch.models ORDER BY id"))]


def offline_env(database_url: str, **env: str) -> dict[str, str]:
    return {"IMGSEARCH_DATABASE_URL": database_url, **env}  # run_cli keeps the hub offline


def test_opening_and_searching_register_nothing(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url) as catalog:
        assert (catalog.model, catalog.dim, catalog.active_model.registered) == (HUB_MODEL, 768, False)
        assert catalog.search(vector=unit(768), k=5) == []
        assert catalog.categories() == []
        assert registered(catalog) == []
    with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip))) as catalog:
        assert (catalog.model, catalog.dim) == (str(tiny_siglip), 32)  # nothing was decided
        image_id = catalog.add(image=image_bytes(1), tenant="acme", product_id="p")
        assert registered(catalog) == [(str(tiny_siglip), True)]  # the first upload decides
        assert catalog.get(image_id).state == "pending" and catalog.active_model.registered


def test_a_model_without_embeddings_gives_way_to_the_configured_one(
    database_url: str, tiny_siglip: Path
) -> None:
    """The trap: an earlier version registered the hub model at the first open; offline it can't
    load, and a later IMGSEARCH_MODEL was ignored for good."""
    with Catalog.open(database_url) as catalog:
        catalog.add(image=image_bytes(2), tenant="acme", product_id="pending")  # registers the hub model
        assert registered(catalog) == [(HUB_MODEL, True)]
    drained = run_cli("worker", "--drain", **offline_env(database_url))
    assert drained.returncode != 0 and "cannot load model" in drained.stderr
    env = offline_env(database_url, IMGSEARCH_MODEL=str(tiny_siglip))
    drained = run_cli("worker", "--drain", **env)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith("embedded 1, failed 0")
    with Catalog.open(database_url) as catalog:  # IMGSEARCH_MODEL unset again: the catalog's model stays
        assert catalog.model == str(tiny_siglip)
        assert registered(catalog) == [(HUB_MODEL, False), (str(tiny_siglip), True)]
        assert len(catalog.search(vector=unit(32), k=5)) == 1


def test_the_library_too_replaces_a_model_without_embeddings(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add(image=image_bytes(3), tenant="acme", product_id="p")
    with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip))) as catalog:
        assert catalog.model == str(tiny_siglip) and not catalog.active_model.registered
        catalog.add(embedding=unit(32), tenant="acme", product_id="q")
        assert catalog.active_model.registered and catalog.model == str(tiny_siglip)
        assert [h.product_id for h in catalog.search(vector=unit(32), k=5)] == ["q"]


def test_a_model_never_seen_is_an_error_naming_the_command(database_url: str, tiny_siglip: Path) -> None:
    with Catalog.open(database_url) as catalog:
        catalog.add(embedding=unit(768), tenant="acme", product_id="p")  # the hub model has embeddings
    command = f"imgsearch reembed --model {tiny_siglip} --activate"
    with pytest.raises(
        ConfigurationError, match=f"active model is '{HUB_MODEL}' and it has embeddings"
    ) as raised:
        Catalog.open(database_url, settings=Settings(model=str(tiny_siglip)))
    assert f"`{command}`" in str(raised.value) and "unset IMGSEARCH_MODEL" in str(raised.value)
    search = run_cli(
        "search", "--text", "shoes", **offline_env(database_url, IMGSEARCH_MODEL=str(tiny_siglip))
    )
    assert search.returncode == 2 and command in search.stderr
    assert len(search.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_a_model_switched_from_is_followed_after_a_restart(database_url: str, tiny_siglip: Path) -> None:
    """After `model activate`, a service restarted with the old IMGSEARCH_MODEL serves the new model."""
    with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip))) as catalog:
        catalog.add(embedding=unit(32), tenant="acme", product_id="p")
        other = reembed.register(catalog.engine, "acme/other", 8)
        with catalog.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
                    "SELECT :m, image_id, product_pk, tenant, :v FROM imgsearch.embeddings"
                ),
                {"m": other.id, "v": str(unit(8).tolist())},
            )
        reembed.activate(catalog.engine, other.name)
    with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip))) as catalog:
        assert (catalog.model, catalog.dim) == ("acme/other", 8)
    with pytest.raises(ConfigurationError, match=r"not .* as configured"):  # but an explicit model= insists
        Catalog.open(database_url, model=str(tiny_siglip))


def test_concurrent_first_uploads_register_one_model(database_url: str, tiny_siglip: Path) -> None:
    code = (
        "import sys; from imgsearch import Catalog; from imgsearch.settings import Settings\n"
        f"c = Catalog.open({database_url!r}, settings=Settings(model={str(tiny_siglip)!r}))\n"
        "c.add(embedding=[1.0] * 32, tenant='t', product_id=sys.argv[1]); c.close()"
    )
    env = clean_environment()
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{i}"], env=env) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    with Catalog.open(database_url) as catalog:
        assert registered(catalog) == [(str(tiny_siglip), True)]
        with catalog.engine.connect() as conn:
            assert vector_index.has_embeddings(conn, catalog.active_model.id)
        assert len(catalog.search(vector=unit(32), k=10)) == 4
