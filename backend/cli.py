"""The `mlassist` command: `serve`, `settings`, `archs` (later issues add more)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from backend.errors import MLAssistError
from backend.settings import Settings, settings_markdown

logger = logging.getLogger("mlassist")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 logs full URLs at debug level, query strings (SAS signatures) included.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # The Azure SDK logs every request and response (about 20 lines per registry read).
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
        logging.WARNING)


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from gunicorn.app.base import BaseApplication

    from backend.app import create_app
    from backend.model.detector import ModelSpec

    ModelSpec.from_settings(settings)  # fail here, in one line, on a bad MODEL_WEIGHTS path

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, Any] = {
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
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in each worker after fork: every worker loads its own model.
            configure_logging(settings.log_level)
            return create_app(settings)

    Server().run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mlassist` console script."""
    parser = argparse.ArgumentParser(prog="mlassist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the ML backend (gunicorn)")
    serve.add_argument("--host", help="bind address (default: HOST)")
    serve.add_argument("--port", type=int, help="port (default: PORT)")
    show = commands.add_parser("settings", help="print the settings and their defaults")
    show.add_argument("--markdown", action="store_true", help="as the README's table")
    commands.add_parser("archs", help="list the detector architectures")
    train = commands.add_parser("train", help="run one training round in the foreground")
    train.add_argument("--project", type=int, required=True, help="Label Studio project id")
    train.add_argument("--steps", type=int, help="optimizer steps (default: TRAIN_STEPS)")
    models = commands.add_parser("models", help="list, show, promote or roll back versions")
    models.add_argument("action", choices=("list", "show", "promote", "rollback"))
    models.add_argument("version", nargs="?", help="version (show, promote; rollback: "
                                                   "default the previous champion)")
    models.add_argument("--project", type=int, required=True, help="Label Studio project id")
    worker = commands.add_parser("worker", help="run an RQ worker (training, pre-labels)")
    worker.add_argument("--queues", default="training,prelabel,housekeeping",
                        help="comma list; GPU machines: training; others: prelabel,housekeeping")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    export = commands.add_parser("export-coco", help="write a project's boxes as a COCO file")
    export.add_argument("--project", type=int, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, help="the .json to write")
    export.add_argument("--images-dir", type=Path, help="also download the images here")
    import_ = commands.add_parser("import-coco", help="bring a COCO dataset in as tasks")
    import_.add_argument("file", type=Path)
    import_.add_argument("--images", required=True,
                         help="folder of the images (uploaded), or URL prefix of file_name "
                              "(http(s)://... or /data/local-files/?d=...)")
    import_.add_argument("--project", type=int, required=True)
    import_.add_argument("--as", dest="as_what", choices=("annotations", "predictions"),
                         help="also import the boxes, as ground truth or as pre-labels")
    assign = commands.add_parser("assign", help="give each labeler a batch of tasks (a view)")
    assign.add_argument("--project", type=int, required=True)
    assign.add_argument("--labelers", help="comma list of Label Studio user emails")
    assign.add_argument("--batch", type=int, default=75, help="open tasks per labeler (75)")
    assign.add_argument("--overlap", type=int, default=1,
                        help="labelers per task (default 1: no task in two views)")
    assign.add_argument("--stop", action="store_true", help="stop topping the batches up")
    health = commands.add_parser("healthcheck",
                                 help="exit 0 when this container's worker or sync is alive")
    health.add_argument("what", choices=("worker", "sync"))
    reconcile = commands.add_parser("reconcile",
                                    help="queue whatever training or push-back is due now")
    reconcile.add_argument("--project", type=int, action="append",
                           help="also consider this project (repeatable)")
    status = commands.add_parser("status", help="a project's labels, models and jobs")
    status.add_argument("--project", type=int, required=True)
    connect_ = commands.add_parser("connect", help="connect the backend to a project")
    connect_.add_argument("--project", type=int, required=True)
    connect_.add_argument("--labels", help="comma list of box labels: sets the label config")
    sync = commands.add_parser("sync", help="import blobs from Azure Blob Storage as tasks")
    sync.add_argument("--project", type=int, help="the project (default: SYNC_PROJECT)")
    sync.add_argument("--watch", action="store_true",
                      help="keep syncing every SYNC_INTERVAL seconds until stopped")
    weights = commands.add_parser("weights", help="fetch or import pretrained weights into "
                                                  "the torch cache")
    weights.add_argument("action", choices=("fetch", "import"))
    weights.add_argument("file", nargs="?", type=Path, help="import: the weights file")
    weights.add_argument("--arch", help="fetch: architecture (default: MODEL_ARCH)")
    kind = weights.add_mutually_exclusive_group()
    kind.add_argument("--coco", dest="kind", action="store_const", const="coco",
                      help="fetch: the detector's COCO weights (default: MODEL_WEIGHTS)")
    kind.add_argument("--imagenet", dest="kind", action="store_const", const="imagenet",
                      help="fetch: its backbone's ImageNet weights")
    args = parser.parse_args(argv)

    if args.command == "settings":
        print(settings_markdown())  # noqa: T201 - CLI output
        return 0
    if args.command == "archs":
        from backend.model.architectures import ARCHITECTURES

        for arch in ARCHITECTURES.values():
            print(f"{arch.name:40s} {arch.note}")  # noqa: T201 - CLI output
        return 0
    try:
        if args.command == "weights":
            from backend.model.weights import weights_command

            if args.action == "import" and not args.file:
                parser.error("weights import needs a FILE")
            weights_command(args.action, args.arch, args.kind, args.file)
            return 0
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        if args.command == "serve":
            _serve(settings, args)
        elif args.command == "train":
            from backend.commands import train_command

            train_command(settings, args.project, args.steps)
        elif args.command == "models":
            from backend.commands import models_command

            if args.action in ("show", "promote") and not args.version:
                parser.error(f"models {args.action} needs a VERSION")
            models_command(settings, args.project, args.action, args.version)
        elif args.command == "worker":
            from backend.jobs.worker import run_worker

            run_worker(settings, [q.strip() for q in args.queues.split(",") if q.strip()],
                       burst=args.burst)
        elif args.command == "reconcile":
            from backend.commands import reconcile_command

            reconcile_command(settings, args.project or [])
        elif args.command == "status":
            from backend.commands import status_command

            status_command(settings, args.project)
        elif args.command == "export-coco":
            from backend.commands import export_coco_command

            export_coco_command(settings, args.project, args.output, args.images_dir)
        elif args.command == "import-coco":
            from backend.commands import import_coco_command

            import_coco_command(settings, args.project, args.file, args.images, args.as_what)
        elif args.command == "assign":
            from backend.commands import assign_command

            if not args.stop and not args.labelers:
                parser.error("assign needs --labelers (or --stop)")
            labelers = [e.strip() for e in (args.labelers or "").split(",") if e.strip()]
            assign_command(settings, args.project, labelers, args.batch, args.overlap,
                           args.stop)
        elif args.command == "healthcheck":
            from backend.commands import healthcheck_command

            return healthcheck_command(settings, args.what)
        elif args.command == "sync":
            import json

            from sync.service import run_sync

            project = args.project or settings.sync_project
            if not project:
                parser.error("sync needs --project or SYNC_PROJECT")
            print(json.dumps(run_sync(settings, project, args.watch)))  # noqa: T201
        elif args.command == "connect":
            from backend.commands import connect_command

            connect_command(settings, args.project, args.labels)
    except MLAssistError as exc:
        print(f"mlassist: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
