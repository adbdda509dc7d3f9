"""`mlassist serve`: the ML backend under gunicorn, one model per worker process."""

from __future__ import annotations

import argparse
from typing import Any

from backend.cli.output import add_command, configure_logging
from backend.core.settings import Settings


def register(commands: Any) -> None:
    serve = add_command(commands, "serve", run_serve, "run the ML backend (gunicorn)")
    serve.add_argument("--host", help="bind address (default: HOST)")
    serve.add_argument("--port", type=int, help="port (default: PORT)")


def gunicorn_options(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "bind": f"{args.host or settings.host}:{args.port or settings.port}",
        "workers": settings.web_workers,
        "worker_class": "gthread",
        "threads": settings.web_threads,
        "timeout": settings.web_timeout,
        "graceful_timeout": 30,
        "keepalive": 5,
        "loglevel": settings.log_level,
        "accesslog": "-" if settings.log_level == "debug" else None,
    }


def run_serve(settings: Settings, args: argparse.Namespace) -> None:
    from gunicorn.app.base import BaseApplication

    from backend.http.app import create_app
    from backend.model.detector import ModelSpec

    ModelSpec.from_settings(settings)  # fail here, in one line, on a bad MODEL_WEIGHTS path

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings, args).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in each worker after fork: every worker loads its own model.
            configure_logging(settings.log_level)
            return create_app(settings)

    Server().run()
