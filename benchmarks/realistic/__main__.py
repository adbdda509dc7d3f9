"""Write a realistic scene set: JPEG files and a COCO file; prints the set's summary as JSON.

    python -m benchmarks.realistic OUT_DIR [--preset standard|hard] [--count 600] [--seed 0]
        [--size 480x360] [--sheet PNG [--no-boxes]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.realistic import (  # noqa: E402
    PRESETS,
    MissingMaterial,
    contact_sheet,
    make_scene,
    preset_for,
    write_dataset,
)
from benchmarks.report import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for images/ and coco.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: the preset's, 480x360)")
    parser.add_argument("--sheet", type=Path,
                        help="also write a PNG of the first 8 scenes with their boxes")
    parser.add_argument("--no-boxes", action="store_true", help="the sheet without boxes")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x")) if args.size else (None, None)
    started = time.monotonic()
    try:
        coco = write_dataset(args.out, args.count, args.preset, args.seed, width, height)
        if args.sheet:
            spec = preset_for(args.preset, width, height)
            contact_sheet([make_scene(i, spec, args.seed) for i in range(min(8, args.count))],
                          boxes=not args.no_boxes).save(args.sheet)
    except MissingMaterial as exc:
        raise SystemExit(str(exc)) from None
    info = {k: v for k, v in coco["info"].items() if k not in ("sources", "recipe")}
    emit({**info, "images": len(coco["images"]), "annotations": len(coco["annotations"]),
          "seconds": round(time.monotonic() - started, 1), "coco": str(args.out / "coco.json")},
         None)


if __name__ == "__main__":
    main()
