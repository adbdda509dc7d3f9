"""Bring up MLAssist locally on a built-in demo (scripts/up.sh): Redis, Label Studio, the ML
backend and a worker; a demo project with generated images, connected to the backend.

Everything lives under $MLASSIST_HOME (default ~/.local/share/mlassist/demo): Label Studio's
data, the demo images, generated secrets. Running it again reuses all of it. Ctrl-C stops
every process it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio

from backend.connect import connect_project
from backend.labelstudio import LabelStudioAPI, LabelStudioAuth
from backend.localstack import Process, label_studio_env, upload_images, wait_http
from backend.scenes import SHAPES, write_scenes
from backend.settings import Settings

PROJECT_TITLE = "MLAssist demo"
DEMO_IMAGES = 40
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image">'
          + "".join(f'<Label value="{shape}"/>' for shape in SHAPES)
          + "</RectangleLabels></View>")


def say(message: str) -> None:
    print(f"[up] {message}", flush=True)


def spinner(label: str):
    frames = "|/-\\"
    interactive = sys.stdout.isatty()
    last = [0.0]

    def tick(elapsed: float) -> None:
        if interactive:
            frame = frames[int(elapsed * 4) % 4]
            print(f"\r[up] {label} {frame} {elapsed:4.0f} s", end="", flush=True)
        elif elapsed - last[0] >= 15:
            last[0] = elapsed
            say(f"{label}: still waiting ({elapsed:.0f} s)")

    return tick


def end_spinner() -> None:
    if sys.stdout.isatty():
        print()


def load_secrets(home: Path) -> dict[str, str]:
    path = home / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {"password": secrets.token_urlsafe(12), "token": secrets.token_hex(20),
              "basic_pass": secrets.token_urlsafe(16), "webhook": secrets.token_urlsafe(16)}
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    home = Path(os.environ.get("MLASSIST_HOME", "~/.local/share/mlassist/demo")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    ls_port = int(os.environ.get("LS_PORT", "8080"))
    backend_port = int(os.environ.get("BACKEND_PORT", "9090"))
    redis_port = int(os.environ.get("REDIS_PORT", "6390"))
    ls_venv = Path(os.environ["MLASSIST_LS_VENV"])
    user = os.environ.get("LABEL_STUDIO_USERNAME", "admin@example.com")
    keys = load_secrets(home)
    for port in (ls_port, backend_port, redis_port):
        if port_busy(port):
            say(f"port {port} is already in use (an earlier run still up?); stop it or set "
                "LS_PORT / BACKEND_PORT")
            return 1

    processes: list[Process] = []

    def stop(*_: object) -> None:
        say("stopping ...")
        for process in reversed(processes):
            process.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)

    redis_bin = Path(sys.executable).parent / "redis-server"
    processes.append(Process([str(redis_bin), "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--dir", str(home), "--dbfilename", "redis.rdb",
                              "--save", "60", "1"], os.environ, logs / "redis.log"))
    say(f"Redis is up on port {redis_port}")

    ls_url = f"http://127.0.0.1:{ls_port}"
    ls_env = label_studio_env(home / "label-studio", user, keys["password"], keys["token"])
    first = not (home / "label-studio").exists()
    processes.append(Process([str(ls_venv / "bin" / "label-studio"), "start", "--no-browser",
                              "--internal-host", "127.0.0.1", "--port", str(ls_port)],
                             ls_env, logs / "label-studio.log"))
    label = "starting Label Studio" + (" (first start migrates its database)" if first else "")
    wait_http(f"{ls_url}/health", 300, processes[-1], spinner(label))
    end_spinner()
    say(f"Label Studio is up at {ls_url}")

    backend_url = f"http://127.0.0.1:{backend_port}"
    backend_env = {**os.environ, "LABEL_STUDIO_URL": ls_url,
                   "LABEL_STUDIO_API_KEY": keys["token"],
                   "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                   "WEBHOOK_SECRET": keys.get("webhook", keys["basic_pass"]),
                   "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{backend_port}",
                   "IMAGE_CACHE_DIR": str(home / "image-cache"),
                   "MODEL_WEIGHTS": os.environ.get("MODEL_WEIGHTS", "coco"),
                   "MODEL_WEIGHTS_FALLBACK": os.environ.get("MODEL_WEIGHTS_FALLBACK", "none"),
                   "MODEL_DIR": str(home / "models"),
                   "BASIC_AUTH_USER": "mlassist", "BASIC_AUTH_PASS": keys["basic_pass"],
                   "HOST": "127.0.0.1", "PORT": str(backend_port)}
    processes.append(Process([sys.executable, "-m", "backend.cli", "serve"], backend_env,
                             logs / "backend.log"))
    wait_http(f"{backend_url}/health", 120, processes[-1], spinner("starting the ML backend"))
    end_spinner()
    say(f"ML backend is up at {backend_url}")
    processes.append(Process([sys.executable, "-m", "backend.cli", "worker"], backend_env,
                             logs / "worker.log"))
    say("worker started (training, pre-labels, reconciliation)")

    client = LabelStudio(base_url=ls_url, api_key=keys["token"])
    project = next((p for p in client.projects.list() if p.title == PROJECT_TITLE), None)
    if project is None:
        project = client.projects.create(title=PROJECT_TITLE, label_config=CONFIG)
        say(f"created project {project.id} ({PROJECT_TITLE})")
    if not list(client.tasks.list(project=project.id, page_size=1)):
        paths = write_scenes(home / "images", DEMO_IMAGES)
        upload_images(ls_url, {"Authorization": f"Token {keys['token']}"}, project.id,
                      [(path.name, path.read_bytes(), "image/jpeg") for path in paths])
        say(f"imported {len(paths)} demo images")
    settings = Settings.from_env(backend_env)
    auth = LabelStudioAuth(ls_url, keys["token"])
    for change in connect_project(settings, LabelStudioAPI(auth), project.id):
        say(change)
    setup = requests.post(f"{backend_url}/setup", auth=("mlassist", keys["basic_pass"]),
                          json={"project": str(project.id), "schema": CONFIG}, timeout=5).json()

    say("")
    say(f"Open {ls_url}/projects/{project.id}/data  and log in as {user} / {keys['password']}")
    say(f"Model {setup['model_version']}; labels it covers now: "
        f"{setup.get('labels_covered') or 'none'}; not yet: "
        f"{setup.get('labels_uncovered') or 'none'}")
    say(f"Label {settings.train_min_labeled} images: a worker trains a model, and if it is good "
        "enough, every unlabeled image gets its boxes as pre-labels.")
    say(f"Status: mlassist status --project {project.id}   (or {backend_url}/status?project="
        f"{project.id}, user mlassist / {keys['basic_pass']})")
    say(f"Logs: {logs}   Ctrl-C stops everything.")
    while all(process.running() for process in processes):
        time.sleep(1)
    say("a process exited; see the logs")
    stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
