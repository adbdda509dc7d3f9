"""`mlassist weights fetch|import`: torchvision's pretrained weight files into the torch cache
(nothing else downloads). Needs no Label Studio settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from backend.cli.output import add_command, configure_logging, out


def register(commands: Any) -> None:
    weights = add_command(commands, "weights", run_weights,
                          "fetch or import pretrained weights into the torch cache",
                          settings=False)
    weights.add_argument("action", choices=("fetch", "import"))
    weights.add_argument("file", nargs="?", type=Path, help="import: the weights file")
    weights.add_argument("--arch", help="fetch: architecture (default: MODEL_ARCH)")
    kind = weights.add_mutually_exclusive_group()
    kind.add_argument("--coco", dest="kind", action="store_const", const="coco",
                      help="fetch: the detector's COCO weights (default: MODEL_WEIGHTS)")
    kind.add_argument("--imagenet", dest="kind", action="store_const", const="imagenet",
                      help="fetch: its backbone's ImageNet weights")


def run_weights(_settings: None, args: argparse.Namespace) -> None:
    """Print where the file is, as JSON."""
    from backend.model.weights import fetch_weights, import_weights, weights_settings

    if args.action == "import" and not args.file:
        args.parser.error("weights import needs a FILE")
    settings = weights_settings()
    configure_logging(settings.log_level)
    if args.action == "fetch":
        result = fetch_weights(args.arch or settings.model_arch,
                               args.kind or settings.model_weights, settings.weights_base_url)
    else:
        result = import_weights(args.file)
    out(json.dumps(result))
