"""Finding model weights: a local directory, the Hugging Face cache, or the hub, failing fast offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from imgsearch.errors import ModelUnavailable

HUB_PROBE_SECONDS = 3.0


def _hint(name: str) -> str:
    return (
        f"cannot load model {name!r}: its weights are not cached and the model hub can't be reached. "
        "Download it where the hub is reachable (or copy a checkpoint directory here) and set "
        "IMGSEARCH_MODEL=/path/to/checkpoint"
    )


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_reachable() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def resolve(name: str) -> tuple[str, bool]:
    """Where to load ``name`` from and whether to stay offline (``local_files_only``).

    Raises :class:`ModelUnavailable` within seconds when the weights can't be had, instead of
    letting the hub client retry for half a minute.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"model directory {str(path)!r} has no config.json; is it a checkpoint?")
        return str(path), True
    if name.startswith(("/", ".", "~")) or os.sep + os.sep in name or path.suffix:
        raise ModelUnavailable(f"model directory {name!r} does not exist")
    if _cached(name):
        return name, True
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        raise ModelUnavailable(_hint(name))
    return name, False
