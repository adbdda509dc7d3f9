"""`mlassist train` (one round in the foreground) and `mlassist models` (list, show, promote,
roll back versions)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from backend.cli.output import add_command, out
from backend.core.settings import Settings
from backend.model.registry import open_registry


def register(commands: Any) -> None:
    train = add_command(commands, "train", run_train,
                        "run one training round in the foreground")
    train.add_argument("--project", type=int, required=True, help="Label Studio project id")
    train.add_argument("--steps", type=int, help="optimizer steps (default: TRAIN_STEPS)")
    models = add_command(commands, "models", run_models,
                         "list, show, promote or roll back versions")
    models.add_argument("action", choices=("list", "show", "promote", "rollback"))
    models.add_argument("version", nargs="?", help="version (show, promote; rollback: "
                                                   "default the previous champion)")
    models.add_argument("--project", type=int, required=True, help="Label Studio project id")


def run_train(settings: Settings, args: argparse.Namespace) -> None:
    """Run one training round with a progress bar; print the outcome."""
    from tqdm import tqdm

    from backend.labelstudio.client import LabelStudioAPI
    from backend.media.images import ImageFetcher
    from backend.model.detector import resolve_device
    from backend.model.training import train_round

    fetcher = ImageFetcher.from_settings(settings)
    bar: tqdm | None = None

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"project {args.project}", unit="step",
                       disable=None)  # disable=None: no bar when not on a terminal
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        result = train_round(args.project, settings, LabelStudioAPI(fetcher.auth), fetcher,
                             open_registry(settings), steps=args.steps,
                             device=resolve_device(settings.device), progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out(json.dumps(result.to_dict(), indent=1, default=str))
    verdict = "promoted to champion" if result.promoted else "not promoted"
    out(f"{result.version}: AP50 {result.metrics['ap50']:.3f}, AP {result.metrics['ap']:.3f} "
        f"on {result.val_images} held-out images; {verdict}: {result.reason}")
    for entry in result.calibration.values():
        if entry.get("note"):
            out(entry["note"])


def _row(version: dict[str, Any], champion: str | None) -> str:
    metrics = version.get("metrics") or {}
    mark = "*" if version["version"] == champion else " "
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(version.get("created_at", 0)))
    kept = "" if version.get("checkpoint") else " (pruned)"
    return (f"{mark} {version['version']:<44} {version.get('status', ''):<9} "
            f"AP50 {metrics.get('ap50', 0):.3f}  AP {metrics.get('ap', 0):.3f}  "
            f"labels {version.get('train_labels', 0):>5}  {created}{kept}")


def run_models(settings: Settings, args: argparse.Namespace) -> None:
    """List, show, promote or roll back a project's model versions."""
    action, version, project = args.action, args.version, args.project
    if action in ("show", "promote") and not version:
        args.parser.error(f"models {action} needs a VERSION")
    registry = open_registry(settings)
    if action == "list":
        champion = registry.champion(project)
        versions = registry.versions(project)
        if not versions:
            out(f"project {project} has no trained versions yet")
        for entry in versions:
            out(_row(entry, champion["version"] if champion else None))
    elif action == "show":
        out(json.dumps(registry.record(project, version), indent=1, default=str))
    elif action == "promote":
        registry.promote(project, version)
        out(f"project {project}: champion is now {version}")
    elif action == "rollback":
        restored = registry.rollback(project, version)
        out(f"project {project}: rolled back; champion is now {restored}")
