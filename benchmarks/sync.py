"""Sync benchmark: a fake container listing of 118,000 names imported into a real Label Studio.

The listing is generated (Azurite manages ~2,000 listed blobs/s, so real listings of this size
are measured elsewhere); everything after it is real: the plan, a real SAS signature per task,
bulk imports into Label Studio 1.23.2, and the restart path (reading the imported state back).
Label Studio's own Azure import cannot point at a custom endpoint, so it has no number here.

    python benchmarks/sync.py [--blobs 118000] [--batch 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio import LabelStudioAPI, LabelStudioAuth  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from sync.importer import Importer  # noqa: E402
from sync.plan import BlobInfo, plan  # noqa: E402
from sync.sources import AzureBlobSource  # noqa: E402
from tests.azurite import ACCOUNT, KEY  # noqa: E402
from tests.labels import CONFIG  # noqa: E402
from tests.labelstudio import ADMIN_TOKEN, start_label_studio  # noqa: E402


class FakeListing(AzureBlobSource):
    """A real source object (real SAS signing) whose listing is generated, not fetched."""

    def __init__(self, count: int) -> None:
        connection = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                      f"BlobEndpoint=http://127.0.0.1:9/{ACCOUNT};")
        super().__init__(connection, "train2017", sas_ttl=timedelta(days=7))
        self.count = count

    def list(self):
        for i in range(self.count):
            yield BlobInfo("train2017", f"{i % 100:02d}/{i:012d}.jpg", f"0x8D{i:012X}", 160_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=118_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"machine": {"python": platform.python_version(), "cpu": platform.machine(),
                                "cores": os.cpu_count()}, "blobs": args.blobs,
                    "batch": args.batch}
    source = FakeListing(args.blobs)
    started = time.perf_counter()
    listed = list(source.list())
    todo = plan(listed, {})
    report["plan_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    for blob in listed[:5000]:
        source.url_for(blob.name)
    report["sas_signatures_per_s"] = round(5000 / (time.perf_counter() - started))
    assert len(todo.new) == args.blobs
    with tempfile.TemporaryDirectory() as tmp:
        ls = start_label_studio(Path(tmp))
        try:
            api = LabelStudioAPI(LabelStudioAuth(ls.url, ADMIN_TOKEN), timeout=600)
            from label_studio_sdk import LabelStudio

            project = LabelStudio(base_url=ls.url, api_key=ADMIN_TOKEN).projects.create(
                title="sync benchmark", label_config=CONFIG).id
            importer = Importer(api, project, source, batch=args.batch)
            started = time.perf_counter()
            result = importer.run_pass()
            seconds = time.perf_counter() - started
            report["first_pass"] = {**result.to_dict(), "skipped": len(result.skipped),
                                    "tasks_per_s": round(result.imported / seconds)}
            restarted = Importer(api, project, source, batch=args.batch)
            started = time.perf_counter()
            known = restarted.load_state()
            report["restart_read_back"] = {"tasks": known,
                                           "seconds": round(time.perf_counter() - started, 2)}
            started = time.perf_counter()
            again = restarted.run_pass()
            report["second_pass"] = {"imported": again.imported, "resigned": again.resigned,
                                     "seconds": round(time.perf_counter() - started, 2)}
        finally:
            ls.stop()
    report["target_seconds"] = 300
    report["total_seconds"] = round(report["plan_seconds"] + report["first_pass"]["seconds"], 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
