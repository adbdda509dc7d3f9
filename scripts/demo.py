"""Bring up MLAssist locally on a built-in demo (scripts/up.sh), or label the demo (up.sh label).

`up`: Redis, Label Studio, the ML backend, a worker and the sync service. The sync imports a
folder of generated images (or, with SYNC_CONTAINER and AZURE_STORAGE_CONNECTION_STRING or
SYNC_ACCOUNT_URL set, an Azure Blob container) into a demo project that is connected to the
backend and its webhook.

`label [--count N]`: a simulated labeler submits the ground-truth boxes of N unlabeled demo
images through Label Studio's API, one task at a time, as a person would; past
TRAIN_MIN_LABELED a training runs and the rest of the images get pre-annotations.

Everything lives under $MLASSIST_HOME (default ~/.local/share/mlassist/demo): Label Studio's
data, the demo images, generated secrets, logs. Running it again reuses all of it. Ctrl-C
stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import requests
from label_studio_sdk import LabelStudio

from backend.core.errors import SettingsError
from backend.core.settings import Settings
from backend.demo.localstack import Process, label_studio_env, wait_http
from backend.demo.scenes import LABEL_CONFIG, make_scene, scene_regions, seed_of, write_scenes
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.labelstudio.connect import connect_project

PROJECT_TITLE = "MLAssist demo"
IMAGES_DIR = "demo-images"  # under $MLASSIST_HOME, which is Label Studio's local-files root
DEMO_SYNC_INTERVAL = "15"


def say(message: str) -> None:
    print(f"[up] {message}", flush=True)


def spinner(label: str) -> Callable[[float], None]:
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


class Demo:
    """Paths, ports and secrets of one demo home."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.home = Path(environ.get("MLASSIST_HOME",
                                     "~/.local/share/mlassist/demo")).expanduser()
        self.home.mkdir(parents=True, exist_ok=True)
        self.ls_port = int(environ.get("LS_PORT", "8080"))
        self.backend_port = int(environ.get("BACKEND_PORT", "9090"))
        self.redis_port = int(environ.get("REDIS_PORT", "6390"))
        self.user = environ.get("LABEL_STUDIO_USERNAME", "admin@example.com")
        self.keys = self._secrets()
        self.ls_url = f"http://127.0.0.1:{self.ls_port}"
        self.backend_url = f"http://127.0.0.1:{self.backend_port}"
        self.logs = self.home / "logs"

    def _secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        values = {"password": secrets.token_urlsafe(12), "token": secrets.token_hex(20),
                  "basic_pass": secrets.token_urlsafe(16), "webhook": secrets.token_urlsafe(16)}
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values

    def client(self) -> LabelStudio:
        return LabelStudio(base_url=self.ls_url, api_key=self.keys["token"])

    def azure(self) -> bool:
        """Whether the environment names a real container to sync instead of the demo folder."""
        return bool(self.environ.get("SYNC_CONTAINER")
                    and (self.environ.get("AZURE_STORAGE_CONNECTION_STRING")
                         or self.environ.get("SYNC_ACCOUNT_URL")))

    def backend_env(self) -> dict[str, str]:
        env = {**self.environ,
               "LABEL_STUDIO_URL": self.ls_url, "LABEL_STUDIO_API_KEY": self.keys["token"],
               "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
               "WEBHOOK_SECRET": self.keys.get("webhook", self.keys["basic_pass"]),
               "BACKEND_PUBLIC_URL": self.backend_url,
               "IMAGE_CACHE_DIR": str(self.home / "image-cache"),
               "MODEL_WEIGHTS": self.environ.get("MODEL_WEIGHTS", "coco"),
               "MODEL_WEIGHTS_FALLBACK": self.environ.get("MODEL_WEIGHTS_FALLBACK", "none"),
               "MODEL_DIR": str(self.home / "models"),
               "BASIC_AUTH_USER": "mlassist", "BASIC_AUTH_PASS": self.keys["basic_pass"],
               "HOST": "127.0.0.1", "PORT": str(self.backend_port),
               "SYNC_INTERVAL": self.environ.get("SYNC_INTERVAL", DEMO_SYNC_INTERVAL)}
        if not self.azure():
            env["SYNC_LOCAL_DIR"] = str(self.home / IMAGES_DIR)
            env["SYNC_LOCAL_URL_PREFIX"] = f"/data/local-files/?d={IMAGES_DIR}/"
        return env

    def project_id(self) -> int | None:
        found = next((p for p in self.client().projects.list() if p.title == PROJECT_TITLE),
                     None)
        return None if found is None else int(found.id)  # type: ignore[arg-type]


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def blob_host(settings: Settings) -> str:
    """The host of the configured container, which the backend must be allowed to fetch."""
    from sync.service import build_importer

    source = build_importer(settings, 0).source
    return urlsplit(source.container.url).hostname or ""  # type: ignore[union-attr]


def _demo_settings(demo: Demo) -> tuple[dict[str, str], Settings] | int:
    """The backend's environment and settings, or the exit status after saying what is
    wrong (1: a port is taken, 2: a configuration error)."""
    for port in (demo.ls_port, demo.backend_port, demo.redis_port):
        if port_busy(port):
            say(f"port {port} is already in use (an earlier run still up?); stop it or set "
                "LS_PORT / BACKEND_PORT / REDIS_PORT")
            return 1
    env = demo.backend_env()
    try:
        settings = Settings.from_env(env)
        if demo.azure():
            host = blob_host(settings)
            env["ALLOWED_IMAGE_HOSTS"] = ",".join(
                h for h in (env.get("ALLOWED_IMAGE_HOSTS", ""), host) if h)
    except (SettingsError, ValueError) as exc:
        say(f"configuration error: {exc}")
        return 2
    return env, settings


def _start_services(demo: Demo, env: dict[str, str], processes: list[Process]) -> None:
    """Redis, Label Studio, the backend and a worker, each waited for."""
    redis_bin = Path(sys.executable).parent / "redis-server"
    processes.append(Process([str(redis_bin), "--port", str(demo.redis_port),
                              "--bind", "127.0.0.1", "--dir", str(demo.home),
                              "--dbfilename", "redis.rdb", "--save", "60", "1"],
                             os.environ, demo.logs / "redis.log"))
    say(f"Redis is up on port {demo.redis_port}")

    ls_venv = Path(demo.environ["MLASSIST_LS_VENV"])
    ls_env = label_studio_env(demo.home / "label-studio", demo.user, demo.keys["password"],
                              demo.keys["token"], files_root=demo.home)
    first = not (demo.home / "label-studio").exists()
    processes.append(Process([str(ls_venv / "bin" / "label-studio"), "start", "--no-browser",
                              "--internal-host", "127.0.0.1", "--port", str(demo.ls_port)],
                             ls_env, demo.logs / "label-studio.log"))
    label = "starting Label Studio" + (" (first start migrates its database)" if first else "")
    wait_http(f"{demo.ls_url}/health", 300, processes[-1], spinner(label))
    end_spinner()
    say(f"Label Studio is up at {demo.ls_url}")

    processes.append(Process([sys.executable, "-m", "backend.cli", "serve"], env,
                             demo.logs / "backend.log"))
    wait_http(f"{demo.backend_url}/health", 120, processes[-1],
              spinner("starting the ML backend"))
    end_spinner()
    say(f"ML backend is up at {demo.backend_url}")
    processes.append(Process([sys.executable, "-m", "backend.cli", "worker"], env,
                             demo.logs / "worker.log"))
    say("worker started (training, pre-labels, reconciliation)")


def _prepare_project(demo: Demo, settings: Settings, env: dict[str, str]) -> int:
    """The demo project, connected, with its images where the sync finds them."""
    client = demo.client()
    project = demo.project_id()
    if project is None:
        project = int(client.projects.create(title=PROJECT_TITLE,  # type: ignore[arg-type]
                                             label_config=LABEL_CONFIG).id)
        say(f"created project {project} ({PROJECT_TITLE})")
    api = LabelStudioAPI(LabelStudioAuth(demo.ls_url, demo.keys["token"]))
    for change in connect_project(settings, api, project):
        say(change)
    if demo.azure():
        say(f"syncing container {env['SYNC_CONTAINER']!r} (Azure variables are set)")
        return project
    count = int(demo.environ.get("DEMO_IMAGES", "60"))
    folder = demo.home / IMAGES_DIR
    write_scenes(folder, count)
    if not any(s.get("path") == str(folder) for s in api.local_storages(project)):
        # Grants Label Studio's /data/local-files/ access to the folder; our sync imports.
        api.create_local_storage(project=project, path=str(folder), title="demo images",
                                 use_blob_urls=True, regex_filter=r".*\.jpg")
    say(f"syncing the demo folder {folder} ({count} generated images; drop more in)")
    return project


def _first_sync(demo: Demo, project: int, sync: Process) -> bool:
    """Wait for the sync's first tasks; False when it imported nothing."""
    client = demo.client()
    tick = spinner("waiting for the first sync pass")
    started = time.monotonic()
    while not list(client.tasks.list(project=project, page_size=1)):
        if not sync.running() or time.monotonic() - started > 300:
            end_spinner()
            say(f"the sync imported nothing; see {demo.logs / 'sync.log'}")
            return False
        tick(time.monotonic() - started)
        time.sleep(0.5)
    end_spinner()
    return True


def _welcome(demo: Demo, settings: Settings, project: int) -> None:
    setup = requests.post(f"{demo.backend_url}/setup",
                          auth=("mlassist", demo.keys["basic_pass"]),
                          json={"project": str(project), "schema": LABEL_CONFIG},
                          timeout=30).json()
    say("")
    say(f"Open {demo.ls_url}/projects/{project}/data  and log in as {demo.user} / "
        f"{demo.keys['password']}")
    say(f"Model {setup['model_version']}; labels it covers now: "
        f"{setup.get('labels_covered') or 'none'}; not yet: "
        f"{setup.get('labels_uncovered') or 'none'}")
    say(f"Label {settings.train_min_labeled} images (or let `./scripts/up.sh label` do it "
        "from another terminal): a worker trains a model, and if it is good enough, every "
        "unlabeled image gets its boxes as pre-labels (about 6 minutes after the last label "
        "on 2 CPU cores, training from scratch).")
    say(f"Status: {demo.backend_url}/status?project={project}  (user mlassist / "
        f"{demo.keys['basic_pass']})")
    say(f"Logs: {demo.logs}   Ctrl-C stops everything.")


def up(demo: Demo) -> int:
    configured = _demo_settings(demo)
    if isinstance(configured, int):
        return configured
    env, settings = configured
    processes: list[Process] = []

    def stop(*_: object, code: int = 0) -> None:
        say("stopping ...")
        for process in reversed(processes):
            process.stop()
        sys.exit(code)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    demo.logs.mkdir(exist_ok=True)
    try:
        _start_services(demo, env, processes)
        project = _prepare_project(demo, settings, env)
        processes.append(Process([sys.executable, "-m", "backend.cli", "sync", "--project",
                                  str(project), "--watch"], env, demo.logs / "sync.log"))
        if not _first_sync(demo, project, processes[-1]):
            stop(code=1)
        _welcome(demo, settings, project)
    except Exception as exc:  # noqa: BLE001 - whatever failed, stop what was started
        end_spinner()
        say(f"start-up failed: {exc}")
        stop(code=1)
    while all(process.running() for process in processes):
        time.sleep(1)
    exited = [p.log.name for p in processes if not p.running()]
    say(f"a process exited ({', '.join(exited)}); see the logs in {demo.logs}")
    stop(code=1)
    return 1


def label(demo: Demo, count: int | None, delay: float) -> int:
    """Submit the ground truth of `count` unlabeled demo images, one task at a time."""
    try:
        project = demo.project_id()
    except Exception as exc:  # noqa: BLE001 - any failure here means the stack is not up
        say(f"Label Studio at {demo.ls_url} did not answer ({type(exc).__name__}); "
            "is ./scripts/up.sh running?")
        return 1
    if project is None:
        say(f"no project {PROJECT_TITLE!r} yet; run ./scripts/up.sh first")
        return 1
    if count is None:
        count = Settings.from_env(demo.backend_env()).train_min_labeled
    client = demo.client()
    todo = [t for t in client.tasks.list(project=project)
            if not t.total_annotations and seed_of(str((t.data or {}).get("image", "")))
            is not None]
    todo.sort(key=lambda t: int(t.id))  # type: ignore[arg-type]
    if not todo:
        say("no unlabeled demo images left (the labeler only knows the generated scenes)")
        return 1
    for done, task in enumerate(todo[:count], 1):
        seed = seed_of(str(task.data["image"]))  # type: ignore[index]
        assert seed is not None
        client.annotations.create(id=task.id,  # type: ignore[arg-type]
                                  result=scene_regions(make_scene(seed)))
        total = min(count, len(todo))
        if sys.stdout.isatty():
            print(f"\r[up] labeled {done}/{total} (task {task.id})", end="", flush=True)
        elif done % 10 == 0 or done == total:
            say(f"labeled {done}/{total}")
        time.sleep(delay)
    end_spinner()
    say(f"done; watch {demo.ls_url}/projects/{project}/data for pre-annotations "
        f"(status: {demo.backend_url}/status?project={project})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="up.sh", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("up", help="bring the stack up (the default)")
    labeling = commands.add_parser("label", help="submit ground-truth boxes of demo images")
    labeling.add_argument("--count", type=int,
                          help="how many tasks (default: TRAIN_MIN_LABELED, 30)")
    labeling.add_argument("--delay", type=float, default=0.2,
                          help="seconds between submissions (default 0.2)")
    args = parser.parse_args(argv)
    demo = Demo(os.environ)
    if args.command == "label":
        return label(demo, args.count, args.delay)
    return up(demo)


if __name__ == "__main__":
    sys.exit(main())
