"""The imgsearch command, driven as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from tests.helpers import clean_environment, run_cli


def imgsearch(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, IMGSEARCH_HOME=str(home), **env)


def test_db_lifecycle(home: Path) -> None:
    assert imgsearch("db", "status", home=home).returncode == 1
    started = imgsearch("db", "start", home=home)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("postgresql+psycopg://")
    status = imgsearch("db", "status", home=home)
    assert status.returncode == 0 and status.stdout.startswith("running")
    assert imgsearch("db", "url", home=home).stdout == started.stdout
    from imgsearch.db import migrate

    assert imgsearch("migrate", home=home).stdout.strip() == f"database at revision {migrate.head()}"
    assert imgsearch("db", "stop", home=home).stdout.strip() == "stopped"
    assert imgsearch("db", "status", home=home).returncode == 1


COMMANDS = [
    ["db"], ["migrate"], ["tenant"], ["tenant", "create-login"], ["ingest"], ["worker"], ["status"],
    ["retry-failed"], ["search"], ["reembed"], ["model"], ["model", "list"], ["model", "activate"],
    ["model", "drop"], ["model", "reindex"], ["model", "add"], ["demo"], ["delete"], ["update"], ["serve"],
    ["tenant", "create-key"], ["tenant", "list-keys"], ["tenant", "revoke-key"], ["boosts"], ["boosts", "refresh"],
]  # fmt: skip


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from imgsearch.cli import build_parser

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command, "--help"])
        assert exited.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: imgsearch {' '.join(command)}") and len(shown.splitlines()) > 3
    listed = subprocess.run([sys.executable, "-m", "imgsearch", "--help"], capture_output=True, text=True)
    assert all(command[0] in listed.stdout for command in COMMANDS)


def test_user_error_is_one_line_without_traceback(home: Path) -> None:
    run = imgsearch("migrate", home=home, IMGSEARCH_DATABASE_URL="mysql://root@localhost/x")
    assert run.returncode == 2
    assert run.stderr.strip() == "imgsearch: imgsearch needs PostgreSQL, got a 'mysql' URL"


def test_invalid_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgsearch.cli import main

    monkeypatch.setenv("IMGSEARCH_BATCH_SIZE", "many")
    monkeypatch.setenv("IMGSEARCH_ASPECT", "stretch")
    assert main(["status"]) == 2
    assert capsys.readouterr().err == (
        "imgsearch: invalid settings: IMGSEARCH_ASPECT='stretch': Input should be 'resize' or 'pad'; "
        "IMGSEARCH_BATCH_SIZE='many': Input should be a valid integer, unable to parse string as an integer\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--concurrency", "0"],
        ["worker", "--batch-size", "-3"],
        ["reembed", "--model", "m", "--batch-size", "x"],
    ],
)
def test_counts_must_be_above_zero(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from imgsearch.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert "must be a whole number above 0, got" in capsys.readouterr().err


def test_migrate_to_an_unknown_revision_is_one_line(database_url: str) -> None:
    run = run_cli("migrate", "9999", IMGSEARCH_DATABASE_URL=database_url)
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        == "imgsearch: cannot migrate to '9999': Can't locate revision identified by '9999'"
    )


def test_unreachable_database_exits_tempfail(home: Path) -> None:
    run = imgsearch("migrate", home=home, IMGSEARCH_DATABASE_URL="postgresql://x@127.0.0.1:1/db")
    assert run.returncode == 75
    assert "Traceback" not in run.stderr and run.stderr.startswith("imgsearch: cannot connect")


def test_tenant_create_login(home: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "tenant",
            "create-login",
            "cli_console",
            "--tenant",
            "acme",
            "--password-stdin",
        ],
        env=clean_environment(IMGSEARCH_HOME=str(home)),
        input="pw\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "created login 'cli_console', restricted to tenant 'acme'"
    again = imgsearch("tenant", "create-login", "cli_console", "--tenant", "acme", home=home)
    assert (
        again.returncode == 2
        and again.stderr.strip() == "imgsearch: a login named 'cli_console' already exists"
    )
    made = imgsearch("tenant", "create-login", "cli_console_2", "--tenant", "acme", home=home)
    lines = made.stdout.splitlines()
    assert made.returncode == 0 and lines[1] == "its password, shown once (psql asks for it):"
    assert len(lines[2]) >= 24  # made here: the login authenticates by password
    imgsearch("db", "stop", home=home)  # the role lives in this test's own server, removed with it


def test_a_reader_gone_ends_the_command_quietly(home: Path) -> None:
    """`imgsearch status | head -1`: no BrokenPipeError traceback."""
    imgsearch("db", "start", home=home)
    env = clean_environment(IMGSEARCH_HOME=str(home))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "imgsearch", "status"],
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
    imgsearch("db", "stop", home=home)


def test_serve_on_a_port_in_use_is_one_line(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = imgsearch("serve", "--port", str(port), home=home)
    assert done.returncode == 2
    assert (
        done.stderr
        == f"imgsearch: port {port} on 127.0.0.1 is in use (another server?); choose another with --port\n"
    )
    assert "startup complete" not in done.stdout + done.stderr


def test_ingests_exit_codes_are_documented() -> None:
    from imgsearch.cli import build_parser

    ingest = build_parser()._subparsers._group_actions[0].choices["ingest"]  # type: ignore[union-attr]
    epilog = ingest.epilog or ""
    for code in ("0", "1", "2", "3", "75"):
        assert f"{code} " in epilog, epilog


def test_a_statement_the_database_refuses_is_one_line(empty_database_url: str) -> None:
    """An error no check foresaw (here a table in the way of the first migration) is the
    database's own message on one line, not a traceback."""
    url = make_url(empty_database_url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA imgsearch; CREATE TABLE imgsearch.models (x int)")
    result = run_cli("migrate", IMGSEARCH_DATABASE_URL=empty_database_url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgsearch: the database refused it: "), result.stderr
    assert "Traceback" not in result.stderr
