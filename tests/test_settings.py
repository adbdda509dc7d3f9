from __future__ import annotations

import subprocess
import sys

import pytest

from backend.core.errors import SettingsError
from backend.core.settings import Settings, settings_markdown
from tests.conftest import BASE_ENV, make_settings


def test_defaults_and_parsing() -> None:
    settings = make_settings(ALLOWED_IMAGE_HOSTS=" Images.Example.com , *.blob.core.windows.net,",
                             SCORE_THRESHOLD="0.25", LABEL_STUDIO_URL="http://ls:8080/")
    assert settings.label_studio_url == "http://ls:8080"
    assert settings.allowed_image_hosts == ("images.example.com", "*.blob.core.windows.net")
    assert settings.score_threshold == 0.25
    assert settings.model_arch == "ssdlite320_mobilenet_v3_large"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.port == 9090
    assert not settings.auth_enabled


@pytest.mark.parametrize(("env", "message"), [
    ({"LABEL_STUDIO_URL": None}, "LABEL_STUDIO_URL is required"),
    ({"LABEL_STUDIO_API_KEY": ""}, "LABEL_STUDIO_API_KEY is required"),
    ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL='localhost:8080' is invalid"),
    ({"REDIS_URL": "http://r"}, "REDIS_URL='http://r' is invalid"),
    ({"DEVICE": "tpu"}, "DEVICE='tpu' is invalid: must be one of cpu, cuda"),
    ({"PORT": "-3"}, "PORT='-3' is invalid: must be a positive integer"),
    ({"SCORE_THRESHOLD": "1.5"}, "SCORE_THRESHOLD='1.5' is invalid"),
    ({"MODEL_ARCH": "yolo"}, "MODEL_ARCH='yolo' is unknown"),
    ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together"),
    ({"WEB_TIMEOUT": "60", "PREDICT_TIME_BUDGET": "80"}, "WEB_TIMEOUT (60) must exceed"),
])
def test_bad_settings_name_the_variable(env: dict, message: str) -> None:
    merged = {**BASE_ENV, **env}
    merged = {key: value for key, value in merged.items() if value is not None}
    with pytest.raises(SettingsError, match=None) as info:
        Settings.from_env(merged)
    assert message in str(info.value)


def test_secrets_stay_out_of_repr() -> None:
    settings = make_settings(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="hunter2",
                             LABEL_STUDIO_API_KEY="key-4242")
    assert "hunter2" not in repr(settings) and "key-4242" not in repr(settings)
    assert settings.basic_auth_pass == "hunter2"


@pytest.mark.parametrize("value", ["inf", "nan", "1e309", "0", "-1"])
def test_non_finite_durations_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="IMAGE_FETCH_TIMEOUT"):
        make_settings(IMAGE_FETCH_TIMEOUT=value)


def test_markdown_lists_every_setting() -> None:
    table = settings_markdown()
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "REDIS_URL", "MODEL_DIR",
                 "MODEL_ARCH", "MODEL_WEIGHTS", "DEVICE", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert f"| `{name}` |" in table


def test_cli_stops_with_one_line_on_bad_setting() -> None:
    env = {"PATH": "/usr/bin:/bin", "LABEL_STUDIO_URL": "ftp://nope", "LABEL_STUDIO_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "backend.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mlassist: LABEL_STUDIO_URL='ftp://nope' is invalid: must be an http(s) URL with a "
        "host, e.g. http://localhost:8080"]
    assert "Traceback" not in done.stderr


def test_cli_rejects_missing_checkpoint_in_one_line(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LABEL_STUDIO_URL": "http://ls", "LABEL_STUDIO_API_KEY": "k",
           "MODEL_WEIGHTS": str(tmp_path / "missing.pt")}
    done = subprocess.run([sys.executable, "-m", "backend.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "is neither coco, imagenet, none nor an existing checkpoint file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_readme_documents_the_current_settings() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_markdown() in readme, "regenerate with `mlassist settings --markdown`"
