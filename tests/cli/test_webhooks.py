"""``imgsearch webhooks`` as an operator runs it: add prints the id and the secret once, list
shows endpoints without secrets, rotate-secret, replay and remove; mistakes are one line."""

from __future__ import annotations

import datetime as dt
import json

from tests.helpers import run_cli


def test_add_list_rotate_replay_remove(database_url: str) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url}
    added = run_cli("webhooks", "add", "https://hooks.example.com/in", "--tenant", "acme",
                    "--events", "image.ready,image.failed", **env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    first, secret = added.stdout.strip().splitlines()
    endpoint = int(first.split()[1])
    assert secret.startswith("whsec_")
    listed = run_cli("webhooks", "list", "--tenant", "acme", "--json", **env)
    [shown] = json.loads(listed.stdout)
    assert (shown["id"], shown["events"], shown["pending"]) == (endpoint, ["image.ready", "image.failed"], 0)
    assert secret not in listed.stdout
    text = run_cli("webhooks", "list", **env).stdout
    assert "https://hooks.example.com/in" in text and "deliveries: 0 pending" in text
    rotated = run_cli("webhooks", "rotate-secret", str(endpoint), "--tenant", "acme", **env)
    assert rotated.returncode == 0 and rotated.stdout.strip().splitlines()[-1] not in (secret, "")
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    replayed = run_cli("webhooks", "replay", "--tenant", "acme", "--since", since, **env)
    assert replayed.returncode == 0 and replayed.stdout.startswith("0 deliveries queued"), replayed.stderr
    assert run_cli("webhooks", "remove", str(endpoint), "--tenant", "acme", **env).returncode == 0
    assert "no webhook endpoints for acme" in run_cli("webhooks", "list", "--tenant", "acme", **env).stdout


def test_mistakes_are_one_clear_line(database_url: str) -> None:
    env = {"IMGSEARCH_DATABASE_URL": database_url}
    for args, words in (
        (("add", "http://192.168.1.10/hook", "--tenant", "acme"), "not at a public address"),
        (("add", "https://example.com/", "--tenant", "acme", "--events", "image.lost"), "unknown event type"),
        (("remove", "77", "--tenant", "acme"), "no webhook endpoint 77"),
        (("replay", "--tenant", "acme", "--since", "yesterday"), "ISO 8601"),
    ):
        done = run_cli("webhooks", *args, **env)
        assert done.returncode != 0 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
