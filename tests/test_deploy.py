"""docker-compose.yml and the worker Dockerfile, checked without Docker: services, images, the
settings their environment sets, and the commands they run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgsearch.cli import build_parser
from imgsearch.settings import Settings

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {str(k): str(v) for k, v in env.items()}


def test_services_images_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "postgres-replica",
        "redis",
        "migrate",
        "api",
        "api-replicas",
        "worker",
        "worker-gpu",
        "citus-coordinator",
        "citus-worker-1",
        "citus-worker-2",
        "citus-setup",
        "migrate-citus",
        "api-citus",
        "worker-citus",
    }
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["redis"]["image"].startswith("redis:")
    for name in ("postgres", "redis", "api", "worker", "worker-gpu"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert "models:/models" in services[name]["volumes"]
    assert set(compose["volumes"]) == {
        "pgdata", "pgdata-replica", "models", "citus-coordinator", "citus-worker-1", "citus-worker-2"
    }  # fmt: skip
    assert any(v.startswith("pgdata:/var/lib/postgresql") for v in services["postgres"]["volumes"])


def test_replica_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    standby, api = services["postgres-replica"], services["api-replicas"]
    assert standby["profiles"] == api["profiles"] == ["replica"]
    assert standby["image"] == services["postgres"]["image"]
    # the standby copies the primary with pg_basebackup -R and starts as a hot standby
    script = (ROOT / "deploy" / "postgres" / "standby.sh").read_text()
    assert 'pg_basebackup -h "$PRIMARY_HOST"' in script and "-R -X stream" in script
    assert "hot_standby=on" in script
    assert any(v.endswith(":/standby.sh:ro") for v in standby["volumes"])
    assert environment(standby)["PRIMARY_HOST"] == "postgres"
    # the primary lets it stream
    hba = (ROOT / "deploy" / "postgres" / "allow-replication.sh").read_text()
    assert "host replication all all scram-sha-256" in hba
    assert any("docker-entrypoint-initdb.d" in v for v in services["postgres"]["volumes"])
    # the API's searches go to the standby; everything else to the primary
    env = environment(api)
    assert env["IMGSEARCH_REPLICA_URLS"].endswith("@postgres-replica:5432/imgsearch")
    assert env["IMGSEARCH_DATABASE_URL"].endswith("@postgres:5432/imgsearch")
    assert Settings(replica_urls=env["IMGSEARCH_REPLICA_URLS"]).replica_urls == [
        env["IMGSEARCH_REPLICA_URLS"]
    ]
    assert api["depends_on"]["postgres-replica"]["condition"] == "service_healthy"


def test_gpu_worker_profile(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert environment(gpu)["IMGSEARCH_DEVICE"] == "cuda"
    assert "cu1" in gpu["build"]["args"]["TORCH_INDEX"]  # a CUDA build of torch
    assert "--device" in gpu["command"] and gpu["command"][gpu["command"].index("--device") + 1] == "cuda"
    # bf16: the embedder picks bfloat16 on CUDA devices that support it
    source = (ROOT / "imgsearch" / "embed" / "model.py").read_text()
    assert "torch.bfloat16 if torch.cuda.is_bf16_supported()" in source


def test_environment_matches_the_settings_and_the_database(compose: dict[str, Any]) -> None:
    known = {f"IMGSEARCH_{name.upper()}" for name in Settings.model_fields}
    postgres = environment(compose["services"]["postgres"])
    for name in ("migrate", "api", "worker", "worker-gpu"):
        env = environment(compose["services"][name])
        ours = {key for key in env if key.startswith("IMGSEARCH_")}
        assert ours <= known, f"{name} sets unknown settings {ours - known}"
        assert {"IMGSEARCH_DATABASE_URL", "IMGSEARCH_REDIS_URL", "IMGSEARCH_MODEL"} <= ours
        settings = Settings(
            **{key.removeprefix("IMGSEARCH_").lower(): value for key, value in env.items() if key in ours}
        )
        url = settings.database_url or ""
        match = re.fullmatch(r"postgresql://(\w+):(\S+)@postgres:5432/(\w+)", url)
        assert match, url
        assert (match[1], match[3]) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
        assert match[2] == postgres["POSTGRES_PASSWORD"]
        assert settings.redis_url == "redis://redis:6379/0"


def test_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    dockerfile = (ROOT / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    commands = [yaml.safe_load(cmd)] + [
        s["command"] for s in compose["services"].values() if s.get("command")
    ]
    for command in commands:
        if command[0] != "imgsearch":
            assert command[0] in ("redis-server", "postgres")
            continue
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown command or option
        assert callable(args.func)
    healthcheck = compose["services"]["worker"]["healthcheck"]["test"][1]
    assert "inspect ping" in healthcheck and "imgsearch-1@" in healthcheck
    assert (
        "imgsearch-{os.getpid()}@%h" in (ROOT / "imgsearch" / "cli" / "workers.py").read_text()
    )  # the node name it pings


def test_api_service_serves_on_its_port_and_checks_readiness(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    args = build_parser().parse_args(api["command"][1:])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.preload and args.workers >= 1
    assert f"{args.port}:{args.port}" in api["ports"]
    check = api["healthcheck"]["test"]
    assert f"http://127.0.0.1:{args.port}/readyz" in " ".join(check)
    assert check[:2] == ["CMD", "python"], "the slim image has python, not curl"
    assert environment(api)["IMGSEARCH_WAKE_WORKERS"] == "true"
    assert "models:/models" in api["volumes"]
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY")]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert "pip install torch==2.13.0" in dockerfile and "pip install '.[worker,onnx,server]'" in dockerfile
    users = [line.split()[1] for line in lines if line.startswith("USER")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(next(line for line in lines if line.startswith("USER"))) < lines.index(
        next(line for line in lines if line.startswith("CMD"))
    )


def test_citus_profile(compose: dict[str, Any]) -> None:
    """A coordinator and 2 workers from deploy/citus/Dockerfile (pgvector's image and Citus's
    package), the workers added by a one-shot setup, and the catalog migrated (and so
    distributed) on the coordinator before an API and a worker use it."""
    services = compose["services"]
    nodes = ["citus-coordinator", "citus-worker-1", "citus-worker-2"]
    profile = [*nodes, "citus-setup", "migrate-citus", "api-citus", "worker-citus"]
    assert all(services[name]["profiles"] == ["citus"] for name in profile)
    dockerfile = (ROOT / "deploy" / "citus" / "Dockerfile").read_text()
    assert dockerfile.splitlines()[3] == "FROM " + services["postgres"]["image"]  # pgvector's, PostgreSQL 18
    assert "postgresql-18-citus-14.0" in dockerfile
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert {"shared_preload_libraries=citus", "wal_level=logical"} <= set(yaml.safe_load(cmd))
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            assert (ROOT / "deploy" / "citus" / shlex.split(line)[1]).exists()
    init = (ROOT / "deploy" / "citus" / "init-node.sh").read_text()
    assert "CREATE EXTENSION IF NOT EXISTS citus;\nCREATE EXTENSION IF NOT EXISTS vector;" in init  # citus first
    for name in nodes:
        node = services[name]
        assert node["build"] == "./deploy/citus" and node["image"] == "imgsearch-citus:pg18"
        assert node["healthcheck"]["test"] and any(v.startswith(f"{name}:") for v in node["volumes"])
    setup = services["citus-setup"]
    assert all(setup["depends_on"][name]["condition"] == "service_healthy" for name in nodes)
    env = environment(setup)
    assert env["COORDINATOR"] == "citus-coordinator" and env["WORKERS"].split() == nodes[1:]
    script = (ROOT / "deploy" / "citus" / "setup.sh").read_text()
    assert "citus_set_coordinator_host" in script and "citus_add_node('$worker', 5432)" in script
    migrate = services["migrate-citus"]
    assert migrate["command"] == ["imgsearch", "migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["citus-setup"]["condition"] == "service_completed_successfully"
    for name in ("migrate-citus", "api-citus", "worker-citus"):
        url = environment(services[name])["IMGSEARCH_DATABASE_URL"]
        assert re.fullmatch(r"postgresql://imgsearch:\S+@citus-coordinator:5432/imgsearch", url), url
        settings = Settings(database_url=url, queue=environment(services[name])["IMGSEARCH_QUEUE"])
        assert settings.queue == "imgsearch-citus"  # its own wake-ups, apart from the one-node stack's
    for name in ("api-citus", "worker-citus"):
        assert services[name]["depends_on"]["migrate-citus"]["condition"] == "service_completed_successfully"
    assert "8002:8000" in services["api-citus"]["ports"]
