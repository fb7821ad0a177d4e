"""retain_freed_memory: a process that allocates and frees the same large buffers round after
round stops page-faulting them in again; the operator's own malloc tuning is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imgsearch.embed import allocator
from imgsearch.settings import Settings

# four rounds of allocating, filling and freeing 16 tensors of 48 MiB (above glibc's largest mmap
# threshold), like a forward pass's activations; prints the minor page faults of each round
ROUNDS = """
import json, resource, sys
import torch
from imgsearch.embed.allocator import retain_freed_memory
from imgsearch.settings import Settings
applied = retain_freed_memory(Settings()) if sys.argv[1] == "retain" else False
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(12 * 1024 * 1024) for _ in range(16)]
    del buffers
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""

PAGES_PER_ROUND = 16 * 48 * 1024 * 1024 // 4096


def rounds(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_freed_buffers_are_reused_without_page_faults() -> None:
    retained = rounds("retain")
    assert retained["applied"] is True
    faults = retained["faults"]
    assert isinstance(faults, list)
    assert faults[0] >= PAGES_PER_ROUND * 0.9  # the first round faults its pages in once
    assert sum(faults[1:]) < PAGES_PER_ROUND * 0.1  # the three later rounds reuse them


def test_default_allocator_faults_every_round() -> None:
    # the behaviour the setting exists for: without it every round maps fresh pages
    plain = rounds("plain")
    assert plain["applied"] is False
    faults = plain["faults"]
    assert isinstance(faults, list)
    assert min(faults) >= PAGES_PER_ROUND * 0.9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_ARENA_MAX_", "2"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_operator_tuning_is_left_alone(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert allocator.operator_tuned() == name
    assert allocator.retain_freed_memory(Settings()) is False


def test_unrelated_preload_does_not_count_as_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libgomp.so.1")
    assert allocator.operator_tuned() is None


def test_the_setting_turns_it_off() -> None:
    assert allocator.retain_freed_memory(Settings(retain_freed_memory=False)) is False
