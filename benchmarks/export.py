"""COCO export benchmark: `mlassist export-coco` on a project with 100,000 boxes, against
Label Studio's own COCO export of the same project, in one run.

Tasks with their annotations are imported into a real Label Studio 1.23.2 in bulk (each
`--boxes-per-task` boxes with the image size recorded, as the editor stores them, so no image
is fetched). Prints JSON: seconds and the export process's peak RSS for ours, seconds for
Label Studio's `exportType=COCO`, and whether both files load in pycocotools with the same
number of boxes.

    python benchmarks/export.py [--tasks 5000] [--boxes-per-task 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio.boxes import to_region  # noqa: E402
from benchmarks.report import emit, machine  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402

SHAPES = ("circle", "square", "triangle")


def tasks(count: int, boxes: int, start: int) -> list[dict]:
    made = []
    for n in range(start, start + count):
        regions = []
        for b in range(boxes):
            x, y = (b % 5) * 120 + 5, (b // 5) * 110 + 5
            region = to_region((x, y, x + 100, y + 90), score=1.0, label=SHAPES[(n + b) % 3],
                               width=640, height=480, from_name="label", to_name="image",
                               region_id=f"r{n}-{b}")
            assert region is not None
            region.pop("score")
            regions.append(region)
        made.append({"data": {"image": f"https://img.example.com/{n}.jpg"},
                     "annotations": [{"result": regions}]})
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--boxes-per-task", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"machine": machine(), "tasks": args.tasks,
                    "boxes": args.tasks * args.boxes_per_task}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ls = start_label_studio(work)
        try:
            headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
            project = requests.post(f"{ls.url}/api/projects", headers=headers, timeout=60,
                                    json={"title": "export", "label_config": CONFIG}
                                    ).json()["id"]
            started = time.perf_counter()
            for start in range(0, args.tasks, 500):
                requests.post(f"{ls.url}/api/projects/{project}/import", headers=headers,
                              timeout=600, json=tasks(min(500, args.tasks - start),
                                                      args.boxes_per_task, start)
                              ).raise_for_status()
            report["import_seconds"] = round(time.perf_counter() - started, 1)

            out = work / "ours.json"
            env = {**os.environ, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
                   "LOG_LEVEL": "warning"}
            # The CLI in a process of its own that reports its peak RSS when it ends.
            probe = ("import resource, sys; from backend.cli import main; "
                     "code = main(sys.argv[1:]); "
                     "use = resource.getrusage(resource.RUSAGE_SELF); "
                     "print('PEAK_KB', use.ru_maxrss, 'CPU_S', use.ru_utime + use.ru_stime, "
                     "file=sys.stderr); sys.exit(code)")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", probe, "export-coco", "--project",
                                   str(project), "-o", str(out)], env=env, capture_output=True,
                                  text=True, timeout=3600)
            ours_s = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            peak_kb = int(done.stderr.split("PEAK_KB")[1].split()[0])
            cpu_s = float(done.stderr.split("CPU_S")[1].split()[0])
            report["mlassist_export"] = {
                "seconds": round(ours_s, 1), "file_mb": round(out.stat().st_size / 2**20, 1),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "cpu_seconds": round(cpu_s, 1),  # the rest is waiting on Label Studio
                "boxes_per_s": round(report["boxes"] / ours_s)}

            started = time.perf_counter()
            theirs = requests.get(f"{ls.url}/api/projects/{project}/export", headers=headers,
                                  params={"exportType": "COCO"}, timeout=3600)
            theirs_s = time.perf_counter() - started
            theirs.raise_for_status()
            (work / "theirs.zip").write_bytes(theirs.content)
            report["label_studio_coco_export"] = {"seconds": round(theirs_s, 1),
                                                  "boxes_per_s": round(report["boxes"] / theirs_s)}
            report["speedup"] = round(theirs_s / ours_s, 2)

            from pycocotools.coco import COCO

            coco = COCO(str(out))
            report["ours_loads_in_pycocotools"] = {"images": len(coco.imgs),
                                                   "annotations": len(coco.anns)}
            assert len(coco.anns) == report["boxes"], report["ours_loads_in_pycocotools"]
        finally:
            ls.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
