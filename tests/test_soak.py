"""The soak run's short version (bench/server/soak.py): 90 s of mixed traffic against the HTTP service,
with workers, a Redis and an embedded PostgreSQL of its own, through three faults. Fails on any
acknowledged upload lost, anything doubled or stuck, a wrong search answer, or a search that
failed outside a fault window."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
FAULTS = ["pg-immediate", "worker-kill", "redis-flush"]


def test_ninety_seconds_through_three_faults_lose_nothing(home: Path) -> None:
    # under a folder of /tmp of its own, as every embedded server of the tests: the run's server
    # reads its data through it, and another pytest session closes pytest's own tmp_path folders
    # to other users (the server's) when it starts
    out = home / "soak"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "server" / "soak.py"),
            "--seconds",
            "90",
            "--rate",
            "12",
            "--faults",
            ",".join(FAULTS),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((out / "report.json").read_text())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert report["ok"], report["invariants"]
    assert all(count == 0 for count in report["invariants"].values())
    # every fault was injected, and the run did real work on both sides of each
    assert [f["fault"] for f in report["faults"]] == FAULTS
    assert not any(f["error"] for f in report["faults"])
    assert report["uploads_acknowledged"] > 100
    assert report["searches_checked_exact"] > 50
    assert report["states"].get("ready", 0) > 100
    # PostgreSQL's immediate stop made requests fail, and each failure was a 503 with Retry-After
    # (or a request whose connection the stop cut); searches came back within the window
    pg = next(f for f in report["faults"] if f["fault"] == "pg-immediate")
    assert pg["failed_requests"] > 0
    assert set(report["in_windows"]) <= {"503 with Retry-After", "0 RemoteDisconnected", "0 timeout"}
    assert report["in_windows"].get("503 with Retry-After", 0) > 0
    # the killed worker was started again by the run's supervisor, and the queue still drained
    assert report["restarts"]["worker-0"] >= 1
    assert report["states"].get("pending", 0) == 0
    # the resources were sampled for every program, PostgreSQL's CPU included, and searches were
    # timed on both sides of the faults (their ratio is reported, not held: this box is noisy)
    assert set(report["cpu_cores"]) == {"server", "worker", "postgres"}
    assert all(cores > 0 for cores in report["cpu_cores"].values())
    assert report["p50_before_faults_ms"] > 0 and report["p50_after_faults_ms"] > 0


def test_the_checker_says_in_one_line_what_its_command_lacks(tmp_path: Path) -> None:
    checker = str(ROOT / "bench" / "server" / "soak_check.py")
    for args in ([], [str(tmp_path), "postgresql://nowhere/db"]):
        run = subprocess.run([sys.executable, checker, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2
        assert "Traceback" not in run.stderr
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("soak_check.py: error:"), run.stderr
    assert "history.jsonl is missing" in run.stderr
