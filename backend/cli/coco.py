"""`mlassist export-coco` and `mlassist import-coco`: labels out as COCO, datasets in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from backend.cli.output import add_command, labelstudio_api, out
from backend.core.settings import Settings


def register(commands: Any) -> None:
    export = add_command(commands, "export-coco", run_export,
                         "write a project's boxes as a COCO file")
    export.add_argument("--project", type=int, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, help="the .json to write")
    export.add_argument("--images-dir", type=Path, help="also download the images here")
    import_ = add_command(commands, "import-coco", run_import,
                          "bring a COCO dataset in as tasks")
    import_.add_argument("file", type=Path)
    import_.add_argument("--images", required=True,
                         help="folder of the images (uploaded), or URL prefix of file_name "
                              "(http(s)://... or /data/local-files/?d=...)")
    import_.add_argument("--project", type=int, required=True)
    import_.add_argument("--as", dest="as_what", choices=("annotations", "predictions"),
                         help="also import the boxes, as ground truth or as pre-labels")


def run_export(settings: Settings, args: argparse.Namespace) -> None:
    """Write the project's labeled boxes as COCO; print what was written as JSON."""
    from backend.labelstudio.client import LabelStudioAPI
    from backend.media.images import ImageFetcher
    from backend.tools.coco_export import export_coco

    fetcher = ImageFetcher.from_settings(settings)
    report = export_coco(LabelStudioAPI(fetcher.auth), fetcher, args.project, args.output,
                         args.images_dir)
    out(json.dumps({"output": str(args.output), **report.to_dict()}))


def run_import(settings: Settings, args: argparse.Namespace) -> None:
    """Create tasks from a COCO file (idempotent); print what was done as JSON."""
    from backend.tools.coco_import import import_coco, read_coco

    report = import_coco(labelstudio_api(settings), args.project, read_coco(args.file),
                         args.images, args.as_what)
    out(json.dumps(report.to_dict()))
