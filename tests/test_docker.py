"""docker/compose.yaml, validated by a real compose CLI (no Docker engine runs here, so the
images are not built): required secrets, health checks, the GPU reservation, volumes, and
every setting it passes is one the code knows."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from backend.core.settings import Settings
from backend.demo.localstack import FAST_PREDICTION_IMPORT_FLAG
from tests.conftest import require
from tests.services import mlassist_bin

DOCKER = Path(__file__).resolve().parents[1] / "docker"
REQUIRED = {"LABEL_STUDIO_PASSWORD": "admin-pass-123", "LABEL_STUDIO_API_KEY": "a" * 24,
            "POSTGRES_PASSWORD": "pg-pass-123", "BASIC_AUTH_PASS": "basic-pass-123",
            "WEBHOOK_SECRET": "hook-secret-123"}
MLASSIST_SERVICES = ("backend", "gpu-worker", "cpu-worker", "sync")


def compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return require(None, "docker-compose (a compose CLI)")


def config(tmp_path: Path, values: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return subprocess.run([*compose_cli(), "-f", str(DOCKER / "compose.yaml"),
                           "--env-file", str(env_file), "config", *extra],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)})


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    done = config(tmp_path_factory.mktemp("compose"), REQUIRED)
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_the_example_env_file_is_refused_until_its_secrets_are_filled(tmp_path: Path) -> None:
    example = dict(line.split("=", 1) for line in (DOCKER / "env.example").read_text()
                   .splitlines() if line and not line.startswith("#"))
    assert set(REQUIRED) <= set(example)
    done = config(tmp_path, example, "-q")
    assert done.returncode != 0 and "set " in done.stderr
    assert config(tmp_path, {**example, **REQUIRED}, "-q").returncode == 0


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_missing_secret_stops_compose_with_its_name(tmp_path: Path, missing: str) -> None:
    done = config(tmp_path, {k: v for k, v in REQUIRED.items() if k != missing}, "-q")
    assert done.returncode != 0
    assert f"set {missing}" in done.stderr, done.stderr


def test_no_secret_has_a_default_in_the_file() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for name in REQUIRED:
        assert not re.search(r"\$\{" + name + r":?-", text), f"{name} has a default"


def test_every_service_has_a_health_check_and_restarts(resolved: dict) -> None:
    services = resolved["services"]
    assert {"postgres", "label-studio", "redis", "backend", "gpu-worker", "cpu-worker",
            "sync", "azurite"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_label_studio_runs_on_postgres_with_the_facts_settings(resolved: dict) -> None:
    ls = resolved["services"]["label-studio"]
    env = ls["environment"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_HOST"] == "postgres"
    assert env["POSTGRE_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert env["LABEL_STUDIO_USER_TOKEN"] == REQUIRED["LABEL_STUDIO_API_KEY"]
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # LABEL_STUDIO_FACTS.md: both, or the backend on a private address gets 403.
    assert env["SSRF_PROTECTION_ENABLED"] == "false" and env["ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The same flag as the local stack: prediction imports recount only the tasks they touch.
    assert env[FAST_PREDICTION_IMPORT_FLAG] == "true"


def test_the_gpu_worker_reserves_a_gpu_and_runs_the_cuda_image(resolved: dict) -> None:
    worker = resolved["services"]["gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["DEVICE"] == "cuda"
    assert worker["image"].startswith("mlassist-cuda:")
    assert worker["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert worker["profiles"] == ["gpu"]
    assert resolved["services"]["cpu-worker"]["environment"]["DEVICE"] == "cpu"


def test_models_and_weights_live_on_volumes(resolved: dict) -> None:
    for name in ("backend", "gpu-worker", "cpu-worker"):
        targets = {m["target"] if isinstance(m, dict) else m.split(":")[1]
                   for m in resolved["services"][name]["volumes"]}
        assert {"/var/lib/mlassist/models", "/var/cache/torch"} <= targets, name
    assert {"models", "torch-cache", "ls-data", "pg-data", "redis-data"} <= \
        set(resolved["volumes"])


def test_every_setting_passed_to_mlassist_is_one_it_knows(resolved: dict) -> None:
    known = {field.metadata["env"] for field in dataclasses.fields(Settings)}
    for name in MLASSIST_SERVICES:
        env = resolved["services"][name]["environment"]
        unknown = set(env) - known
        assert not unknown, f"{name} passes settings MLAssist does not read: {unknown}"
        Settings.from_env({k: str(v) for k, v in env.items()})  # and every value parses


def test_every_mlassist_command_exists(resolved: dict) -> None:
    for name in MLASSIST_SERVICES:
        service = resolved["services"][name]
        commands = [service["command"]]
        health = service["healthcheck"]["test"]
        if health[1] == "mlassist":
            commands.append(health[1:])
        for command in commands:
            assert command[0] == "mlassist"
            done = subprocess.run([mlassist_bin(), *command[1:], "--help"],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{name}: {command}: {done.stderr}"


def test_the_dockerfile_installs_the_pinned_torch(tmp_path: Path) -> None:
    """The Dockerfile's own pin-extracting command, run here, yields pyproject's pins."""
    import sys
    import tomllib

    text = (DOCKER / "Dockerfile").read_text()
    assert 'pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch-pins.txt' in text
    pins = [d for d in tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
            ["project"]["dependencies"] if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2, "exact torch and torchvision pins"
    line = next(line for line in text.splitlines() if line.startswith("RUN python -c"))
    command = line.removeprefix("RUN ").split(" > /tmp/torch-pins.txt")[0]
    shutil.copy(DOCKER.parent / "pyproject.toml", tmp_path)
    done = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == pins
