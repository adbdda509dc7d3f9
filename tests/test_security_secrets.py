"""Secrets, each tested where it can fail: authentication on every route, constant-time
comparisons, least-privilege SAS URLs from the sync, and no secret in the logs or error bodies
of a real `mlassist serve`."""

from __future__ import annotations

import ast
import base64
import hmac
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from backend.demo.localstack import free_port
from backend.http.app import create_app
from tests import media
from tests.azurite import KEY, Azurite
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.httpserver import LoopbackServer
from tests.labels import CONFIG

REPO = Path(__file__).resolve().parents[1]
METADATA = "169.254.169.254"


# -- authentication -------------------------------------------------------------------

def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def concrete(rule: str) -> str:
    """A path that matches a URL rule (`/static/<path:filename>` -> `/static/x`)."""
    return re.sub(r"<[^>]+>", "x", rule)


def test_every_route_but_health_needs_auth(loopback: LoopbackServer) -> None:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, BASIC_AUTH_USER="user",
                             BASIC_AUTH_PASS="pass", WEBHOOK_SECRET="hook")
    app = create_app(settings, holder=holder_for(FixedDetector([])))
    client = app.test_client()
    rules = list(app.url_map.iter_rules())
    assert {"/health", "/setup", "/predict", "/versions", "/webhook", "/status", "/metrics",
            "/dashboard"} <= {rule.rule for rule in rules}
    refused = [{}, basic("user", "wrong"), basic("wrong", "pass"), basic("", ""),
               {"Authorization": "Bearer pass"}, {"Authorization": "Basic !!!"},
               {"X-MLAssist-Secret": "wrong"}]
    checked = 0
    for rule in rules:
        for method in sorted(rule.methods or ()):
            for headers in refused:
                response = client.open(concrete(rule.rule), method=method, headers=headers,
                                       json={"action": "START_TRAINING", "project": 1})
                where = f"{method} {rule.rule} {headers}"
                if rule.rule == "/health":
                    assert response.status_code == 200, where
                    continue
                assert response.status_code == 401, where
                assert response.headers["WWW-Authenticate"] == 'Basic realm="MLAssist"', where
                if method != "HEAD":
                    assert "error" in response.get_json(), where
                checked += 1
    assert checked >= 7 * 8
    # Paths no route matches are refused too (nothing to learn about what exists).
    assert client.get("/admin").status_code == 401
    assert client.get("/versions", headers=basic("user", "pass")).status_code == 200
    assert client.post("/webhook", headers={"X-MLAssist-Secret": "hook"},
                       json={"action": "SOMETHING_ELSE"}).get_json()["status"] == "ignored"


def test_webhook_secret_is_required_when_configured(loopback: LoopbackServer) -> None:
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, WEBHOOK_SECRET="hook-secret")
    client = create_app(settings, holder=holder_for(FixedDetector([]))).test_client()
    body = {"action": "SOMETHING_ELSE", "project": {"id": 1}}
    for headers in ({}, {"X-MLAssist-Secret": ""}, {"X-MLAssist-Secret": "hook-secre"},
                    {"X-MLAssist-Secret": "hook-secret-and-more"}, basic("u", "hook-secret")):
        response = client.post("/webhook", headers=headers, json=body)
        assert response.status_code == 401, headers
        assert "X-MLAssist-Secret" in response.get_json()["error"]
    answer = client.post("/webhook", headers={"X-MLAssist-Secret": "hook-secret"}, json=body)
    assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"


def test_secrets_are_compared_in_constant_time(loopback: LoopbackServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    settings = make_settings(LABEL_STUDIO_URL=loopback.base, BASIC_AUTH_USER="user",
                             BASIC_AUTH_PASS="pass", WEBHOOK_SECRET="hook")
    client = create_app(settings, holder=holder_for(FixedDetector([]))).test_client()
    assert client.get("/versions", headers=basic("user", "guess")).status_code == 401
    assert (b"guess", b"pass") in calls and (b"user", b"user") in calls
    assert client.post("/webhook", headers={"X-MLAssist-Secret": "hoo"},
                       json={"action": "x"}).status_code == 401
    assert (b"hoo", b"hook") in calls


SECRET_SETTINGS = {"basic_auth_pass", "basic_auth_user", "webhook_secret",
                   "label_studio_api_key", "azure_storage_key", "azure_storage_sas"}


def test_no_secret_is_compared_with_equals() -> None:
    # `==` stops at the first differing byte; hmac.compare_digest does not.
    found = []
    for path in [*(REPO / "backend").rglob("*.py"), *(REPO / "sync").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Attribute) and o.attr in SECRET_SETTINGS
                       for o in operands):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


# -- least-privilege SAS ---------------------------------------------------------------

def sas_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def test_sync_signs_one_blob_read_only_with_the_ttl() -> None:
    from sync.sources import AzureBlobSource

    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    source = AzureBlobSource("", "images", account_url="https://acct.blob.core.windows.net",
                             account_key=KEY, sas_ttl=timedelta(hours=168))
    url, expires = source.url_for("cats/a b.jpg", now=now)
    assert url.startswith("https://acct.blob.core.windows.net/images/cats/a%20b.jpg?")
    sas = sas_of(url)
    assert sas["sp"] == "r"                  # read only: no write, delete, list, add, create
    assert sas["sr"] == "b"                  # this one blob, not the container
    assert "ss" not in sas and "srt" not in sas  # not an account SAS
    assert sas["spr"] == "https"
    assert "st" not in sas                   # valid at once (no clock-skew failures)
    assert datetime.fromisoformat(sas["se"].replace("Z", "+00:00")) == now + timedelta(days=7)
    assert expires == (now + timedelta(days=7)).timestamp()


class FakeDelegationService:
    """The one call a user-delegation signer makes, with Azure's 7-day limit enforced."""

    account_name = "acct"

    def __init__(self) -> None:
        self.requests: list[tuple[datetime, datetime]] = []

    def get_user_delegation_key(self, start: datetime, expiry: datetime) -> Any:
        from azure.storage.blob import UserDelegationKey

        # Azure: the key must expire within 7 days of the current time (start is now - 5 min).
        if expiry - (start + timedelta(minutes=5)) > timedelta(days=7):
            raise ValueError("Azure refuses keys that expire more than 7 days on")
        self.requests.append((start, expiry))
        key = UserDelegationKey()
        key.signed_oid, key.signed_tid = "oid", "tid"
        key.signed_start = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service, key.signed_version = "b", "2025-01-05"
        key.value = base64.b64encode(b"k" * 32).decode()
        return key


def test_user_delegation_sas_stays_within_azures_seven_days() -> None:
    from sync.sources import AzureBlobSource

    source = AzureBlobSource("", "images", account_url="https://acct.blob.core.windows.net",
                             account_key=KEY, sas_ttl=timedelta(hours=168))
    service = FakeDelegationService()
    source.service, source._key = service, None  # as with DefaultAzureCredential
    now = datetime.now(UTC)
    expiries = []
    for hour in range(0, 24 * 10, 6):  # ten days of signing, every 6 hours
        url, expires = source.url_for("a.jpg", now=now + timedelta(hours=hour))
        sas = sas_of(url)
        assert sas["sp"] == "r" and sas["sr"] == "b" and "skoid" in sas
        signed_at = now + timedelta(hours=hour)
        expiries.append(expires - signed_at.timestamp())
        # The SAS never outlives its key.
        assert datetime.fromisoformat(sas["se"].replace("Z", "+00:00")) <= \
            datetime.fromisoformat(sas["ske"].replace("Z", "+00:00"))
    assert all(timedelta(seconds=left) > timedelta(days=7) * 2 / 3 - timedelta(minutes=10)
               for left in expiries)
    assert 3 <= len(service.requests) <= 6  # keys are reused, not fetched per URL


def test_a_configured_sas_token_must_be_read_and_list_only() -> None:
    from sync.sources import AzureBlobSource

    for token in ("sv=2024&ss=b&srt=co&sp=rwdlac&se=2030-01-01&sig=x", "sp=rd&sig=x"):
        with pytest.raises(ValueError, match="read and list only"):
            AzureBlobSource("", "c", account_url="https://a.blob.core.windows.net",
                            sas_token=token)
    source = AzureBlobSource("", "c", account_url="https://a.blob.core.windows.net",
                             sas_token="?sv=2024&sr=c&sp=rl&sig=x")
    assert source.url_for("a.jpg")[0].endswith("/c/a.jpg?sv=2024&sr=c&sp=rl&sig=x")


class RecordingLabelStudio:
    """The two calls an import pass makes, recorded."""

    def __init__(self) -> None:
        self.imported: list[dict] = []

    def task_page(self, project: int, after: int, limit: int) -> list[dict]:
        return []

    def import_tasks(self, project: int, tasks: list[dict]) -> None:
        self.imported.extend(tasks)  # no ids: the importer learns them by reading back


def test_synced_task_urls_can_read_their_blob_and_nothing_else(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    from sync.importer import Importer
    from sync.sources import AzureBlobSource

    container = f"sas{int(time.time() * 1000)}"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    for name in ("a.png", "b.png"):
        service.get_blob_client(container, name).upload_blob(media.png(16, 16))
    api = RecordingLabelStudio()
    source = AzureBlobSource(azurite.connection_string, container,
                             sas_ttl=timedelta(hours=2))
    Importer(api, 1, source).run_pass()
    assert len(api.imported) == 2
    started = time.time()
    for task in api.imported:
        url = task["data"]["image"]
        sibling = "b.png" if task["data"]["mlassist_blob"].endswith("a.png") else "a.png"
        sas = sas_of(url)
        assert sas["sp"] == "r" and sas["sr"] == "b"
        assert 2 * 3600 - 60 < task["data"]["mlassist_url_expires"] - started <= 2 * 3600
        assert requests.get(url, timeout=10).content == media.png(16, 16)
        base, _, query = url.partition("?")
        for method, target, headers in (
                ("PUT", url, {"x-ms-blob-type": "BlockBlob"}),           # overwrite
                ("PUT", f"{base}-new.png?{query}", {"x-ms-blob-type": "BlockBlob"}),  # create
                ("DELETE", url, {}),
                ("GET", f"{base.rsplit('/', 1)[0]}?restype=container&comp=list&{query}", {}),
                ("GET", f"{base.rsplit('/', 1)[0]}/{sibling}?{query}", {}),  # another blob
        ):
            refused = requests.request(method, target, headers=headers, data=b"x", timeout=10)
            assert refused.status_code == 403, (method, target.split("?")[0])
    assert requests.get(api.imported[0]["data"]["image"], timeout=10).ok  # still there


# -- no secrets in logs or error bodies (a real `mlassist serve`) ----------------------

@pytest.fixture
def images() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def test_no_secret_reaches_a_log_line_or_an_error_body(tmp_path: Path, azurite: Azurite,
                                                       images: LoopbackServer) -> None:
    from azure.storage.blob import BlobServiceClient

    from sync.sources import AzureBlobSource
    from tests.services import Backend

    secrets = {
        "api key": "ls-api-key-7f3a91c2e5",
        "basic pass": "basic-pass-4be8d0",
        "webhook secret": "hook-secret-92ac1e",
        "redis password": "redis-pass-55d1f0",
        "account key": KEY,
        "wrong pass sent": "wrong-pass-c0ffee",
        "wrong secret sent": "wrong-hook-beef42",
        "token in a webhook payload": "payload-token-a1b2c3",
    }
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container("seen")
    service.get_blob_client("seen", "ok.png").upload_blob(media.png(20, 20))
    source = AzureBlobSource(azurite.connection_string, "seen")
    signed_ok, signed_missing = source.url_for("ok.png")[0], source.url_for("gone.png")[0]
    for name, url in (("sig ok", signed_ok), ("sig missing", signed_missing)):
        secrets[name] = sas_of(url)["sig"]
    images.add("/bounce", status=302, headers={"Location": f"http://{METADATA}/?sig=zz-meta"})
    images.add("/corrupt.png", media.truncated_jpeg())
    dead = f"http://127.0.0.1:{free_port()}"  # Label Studio (and Redis) unreachable
    azurite_host = urlsplit(signed_ok).netloc
    backend = Backend({
        "LABEL_STUDIO_URL": dead, "LABEL_STUDIO_API_KEY": secrets["api key"],
        "BASIC_AUTH_USER": "mlassist", "BASIC_AUTH_PASS": secrets["basic pass"],
        "WEBHOOK_SECRET": secrets["webhook secret"],
        "REDIS_URL": f"redis://:{secrets['redis password']}@127.0.0.1:{free_port()}/0",
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "REGISTRY_AZURE_CONTAINER": "models", "MODEL_DIR": str(tmp_path / "models"),
        "ALLOWED_IMAGE_HOSTS": f"{azurite_host},127.0.0.1:{images.port},{METADATA}",
        "MODEL_WEIGHTS": "none", "TORCH_THREADS": "1", "LOG_LEVEL": "debug",
    }, tmp_path / "backend.log")
    bodies: list[str] = []
    try:
        backend.wait().wait_model()
        auth = basic("mlassist", secrets["basic pass"])
        wrong = basic("mlassist", secrets["wrong pass sent"])
        session = requests.Session()

        def call(method: str, path: str, expect: int, **kwargs: Any) -> requests.Response:
            response = session.request(method, backend.url + path, timeout=30, **kwargs)
            bodies.append(f"{method} {path} -> {response.status_code}\n"
                          f"{response.headers}\n{response.text}")
            assert response.status_code == expect, bodies[-1]
            return response

        for method, path in (("POST", "/setup"), ("POST", "/predict"), ("GET", "/versions"),
                             ("GET", "/status?project=1"), ("GET", "/metrics"),
                             ("GET", "/dashboard"), ("POST", "/webhook")):
            call(method, path, 401)
            call(method, path, 401, headers=wrong)
        call("POST", "/webhook", 401, headers={"X-MLAssist-Secret": secrets["wrong secret sent"]},
             json={"action": "ANNOTATION_CREATED", "project": {"id": 1}})
        call("POST", "/predict", 400, headers=auth, data=b"{not json")
        call("POST", "/predict", 400, headers=auth, json={"tasks": "x"})
        call("POST", "/setup", 422, headers=auth, json={"schema": "<View/>", "project": 1})
        tasks = [signed_ok, signed_missing, f"{images.base}/bounce",
                 f"{images.base}/corrupt.png", f"http://{METADATA}/latest/?sig=zz-direct",
                 "https://elsewhere.example/x.png?sv=1&sig=zz-elsewhere",
                 "/data/upload/1/x.png", "azure-blob://seen/ok.png"]
        answer = call("POST", "/predict", 200, headers=auth, json={
            "tasks": [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(tasks)],
            "label_config": CONFIG, "project": 1}).json()["results"]
        assert "result" in answer[0]  # the signed URL works
        assert [item.get("reason") for item in answer[1:]] == [
            "http_404", "blocked_address", "corrupt", "blocked_address", "host_not_allowed",
            "fetch_failed", "fetch_failed"]
        call("GET", "/status?project=1", 502, headers=auth)
        call("GET", "/dashboard", 502, headers=auth)
        call("GET", "/versions?project=1", 200, headers=auth)
        call("GET", "/metrics", 200, headers=auth)
        for headers in (auth, {"X-MLAssist-Secret": secrets["webhook secret"]}):
            call("POST", "/webhook", 200, headers=headers, json={
                "action": "ANNOTATION_CREATED", "project": {
                    "id": 1, "token": secrets["token in a webhook payload"]}})
    finally:
        backend.stop()
    log = backend.log.read_text()
    assert "task 3: no prediction" in log and "-> 401" in log  # the errors were logged
    for where, text in (("the backend log", log), ("a response", "\n".join(bodies))):
        for name, secret in secrets.items():
            assert secret not in text, f"{name} in {where}"
        for marker in ("sig=", "AccountKey="):
            assert marker not in text, f"{marker} in {where}"
