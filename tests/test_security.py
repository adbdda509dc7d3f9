"""Security properties, each tested where it can fail: SSRF (DNS answers and rebinding, redirect
hops, IP literal forms), authentication on every route, secrets kept out of logs and error
bodies of a real `mlassist serve`, and least-privilege SAS URLs from the sync."""

from __future__ import annotations

import ast
import base64
import hmac
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from backend.addresses import BlockedAddress, CheckedAdapter, blocked_reason
from backend.app import create_app
from backend.errors import ImageError
from backend.images import ImageFetcher
from backend.labelstudio import LabelStudioAuth
from backend.localstack import free_port
from tests import media
from tests.azurite import KEY, Azurite
from tests.conftest import make_settings
from tests.fakes import FixedDetector, holder_for
from tests.httpserver import LoopbackServer
from tests.labels import CONFIG

REPO = Path(__file__).resolve().parents[1]
METADATA = "169.254.169.254"


def fetcher_for(ls: LoopbackServer, *allowed: str, timeout: float = 5.0) -> ImageFetcher:
    return ImageFetcher(LabelStudioAuth(ls.base, "legacy-token-123"), tuple(allowed),
                        max_bytes=10_000_000, max_pixels=100_000_000, timeout=timeout)


class FakeDNS:
    """socket.getaddrinfo answering chosen names (fixed lists, or a function of the how-many-th
    lookup of that name); other names go to the real resolver."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Callable[[int], list[str]]] = {}
        self.calls: list[str] = []

    def getaddrinfo(self, real: Callable[..., Any], host: str, port: Any, family: int = 0,
                    kind: int = 0, proto: int = 0, flags: int = 0) -> list[tuple]:
        if host not in self.answers:
            return real(host, port, family, kind, proto, flags)
        self.calls.append(host)
        answer = self.answers[host]
        addresses = answer(self.calls.count(host)) if callable(answer) else answer
        found: list[tuple] = []
        for address in addresses:
            if ipaddress.ip_address(address).version == 4:
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port))))
            else:
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "",
                              (address, int(port), 0, 0)))
        return found


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: fake.getaddrinfo(real, *args))
    return fake


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses sockets in this process connect to."""
    seen: list[str] = []
    real = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        seen.append(str(address[0]))
        real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


# -- the address policy ---------------------------------------------------------------

@pytest.mark.parametrize(("address", "blocked"), [
    (METADATA, True), ("169.254.0.1", True), ("fe80::1", True), ("fe80::1%1", True),
    ("fd00:ec2::254", True), ("100.100.100.200", True), ("168.63.129.16", True),
    ("0.0.0.0", True), ("0.1.2.3", True), ("::", True), ("224.0.0.1", True),
    ("ff02::1", True), ("240.0.0.1", True), ("255.255.255.255", True),
    ("::ffff:169.254.169.254", True), ("64:ff9b::a9fe:a9fe", True),
    ("2002:a9fe:a9fe::1", True),                       # 6to4 wrapping the metadata address
    ("127.0.0.1", False), ("::1", False), ("::ffff:127.0.0.1", False), ("10.1.2.3", False),
    ("192.168.0.10", False), ("172.16.5.5", False), ("fd12:3456::1", False),
    ("20.60.1.1", False), ("2603:1000::1", False), ("64:ff9b::1402:0101", False),
])
def test_address_policy(address: str, blocked: bool) -> None:
    assert (blocked_reason(address) is not None) is blocked


# -- SSRF: what allowed names resolve to -----------------------------------------------

def test_allowed_name_resolving_to_metadata_is_never_connected(
        loopback: LoopbackServer, dns: FakeDNS, connects: list[str]) -> None:
    dns.answers["acct.blob.core.windows.net"] = [METADATA]
    fetcher = fetcher_for(loopback, "*.blob.core.windows.net")
    with pytest.raises(ImageError) as info:
        fetcher.fetch("https://acct.blob.core.windows.net/c/a.png?sv=1&sig=SECRETSIG", 1)
    assert info.value.reason == "blocked_address"
    assert f"acct.blob.core.windows.net resolves to {METADATA}" in str(info.value)
    assert "SECRETSIG" not in str(info.value) and "sig=" not in str(info.value)
    assert METADATA not in connects


def test_dns_rebinding_cannot_switch_the_address_after_the_check(
        loopback: LoopbackServer, dns: FakeDNS, connects: list[str]) -> None:
    loopback.add("/a.png", media.png(10, 10))
    host = f"rebind.test:{loopback.port}"
    # First answer fine (loopback is allowed for an allowlisted name), every later one metadata.
    dns.answers["rebind.test"] = lambda n: ["127.0.0.1"] if n == 1 else [METADATA]
    assert fetcher_for(loopback, host).load(f"http://{host}/a.png", 1).width == 10
    # One lookup per connection: the address that was checked is the address connected to.
    assert dns.calls == ["rebind.test"]
    assert connects == ["127.0.0.1"]
    assert loopback.seen["/a.png"][0]["Host"] == host  # the name still goes in Host (and SNI)
    # The next connection looks the name up again, gets the metadata answer, and stops there.
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, host).fetch(f"http://{host}/a.png", 1)
    assert info.value.reason == "blocked_address"
    assert connects == ["127.0.0.1"] and len(loopback.seen["/a.png"]) == 1


def test_one_bad_answer_refuses_the_name(loopback: LoopbackServer, dns: FakeDNS,
                                         connects: list[str]) -> None:
    loopback.add("/a.png", media.png(10, 10))
    host = f"both.test:{loopback.port}"
    dns.answers["both.test"] = ["127.0.0.1", METADATA]
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, host).fetch(f"http://{host}/a.png", 1)
    assert info.value.reason == "blocked_address"
    assert connects == [] and loopback.seen == {}


@pytest.mark.parametrize("address", ["fe80::1", "::ffff:169.254.169.254", "fd00:ec2::254",
                                     "0.0.0.0", "::"])
def test_names_resolving_to_blocked_ipv6_and_unspecified_forms(
        loopback: LoopbackServer, dns: FakeDNS, connects: list[str], address: str) -> None:
    dns.answers["images.example.test"] = [address]
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, "images.example.test").fetch("http://images.example.test/a", 1)
    assert info.value.reason == "blocked_address"
    assert connects == []


def test_the_connected_peer_is_checked_too(loopback: LoopbackServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url = loopback.add("/a.png", media.png(10, 10))
    monkeypatch.setattr(socket.socket, "getpeername", lambda sock: (METADATA, 80))
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback).fetch(url, 1)
    assert info.value.reason == "blocked_address"
    assert loopback.seen == {}  # refused before the request was sent


def test_https_connects_to_the_checked_address_but_keeps_the_name_for_sni(
        loopback: LoopbackServer, dns: FakeDNS, connects: list[str]) -> None:
    hello: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                hello.append(conn.recv(4096))  # the TLS ClientHello; then hang up

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        dns.answers["images.example.test"] = ["127.0.0.1"]
        with pytest.raises(ImageError) as info:
            fetcher_for(loopback, f"images.example.test:{port}").fetch(
                f"https://images.example.test:{port}/a.png", 1)
        thread.join(5)
    assert info.value.reason == "fetch_failed"  # no TLS server here, only a listener
    assert connects == ["127.0.0.1"]
    assert b"images.example.test" in hello[0]  # server_name extension


# -- SSRF: IP literals and redirect hops ----------------------------------------------

@pytest.mark.parametrize(("url", "entry"), [
    (f"http://{METADATA}/latest/meta-data/", METADATA),
    ("http://[fe80::1]/x.png", "[fe80::1]"),
    ("http://[::ffff:169.254.169.254]/x.png", "[::ffff:169.254.169.254]"),
    ("http://[::ffff:a9fe:a9fe]/x.png", "[::ffff:a9fe:a9fe]"),
    ("http://[fd00:ec2::254]/latest/", "[fd00:ec2::254]"),
    ("http://100.100.100.200/latest/meta-data/", "100.100.100.200"),
    ("http://168.63.129.16/machine?comp=goalstate", "168.63.129.16"),
    ("http://224.0.0.1/x.png", "224.0.0.1"),
    ("http://[::]/x.png", "[::]"),
])
def test_blocked_ip_literals_even_when_allowlisted(loopback: LoopbackServer,
                                                   connects: list[str], url: str,
                                                   entry: str) -> None:
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, entry).fetch(url, 1)
    assert info.value.reason == "blocked_address"
    assert connects == []


def test_unspecified_address_would_reach_this_host(loopback: LoopbackServer) -> None:
    # On Linux a connect to 0.0.0.0 lands on the local host: a plain client gets the page.
    url = loopback.add("/internal", b"local only")
    plain = requests.Session()
    plain.trust_env = False
    assert plain.get(url.replace("127.0.0.1", "0.0.0.0"), timeout=5).content == b"local only"
    loopback.seen.clear()
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, f"0.0.0.0:{loopback.port}").fetch(
            url.replace("127.0.0.1", "0.0.0.0"), 1)
    assert info.value.reason == "blocked_address"
    assert loopback.seen == {}


@pytest.mark.parametrize("host", ["2852039166", "0251.0376.0251.0376", "0xa9fea9fe",
                                  "0xa9.0xfe.43518", "2130706433"])
def test_decimal_octal_and_hex_ipv4_forms(loopback: LoopbackServer, connects: list[str],
                                          host: str) -> None:
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, host).fetch(f"http://{host}/latest/meta-data/", 1)
    assert info.value.reason == "bad_reference"
    assert "decimal, octal or hex" in str(info.value)
    assert connects == []


def test_connection_layer_blocks_odd_forms_on_its_own(connects: list[str]) -> None:
    # Defence in depth: even a URL that got past the parser checks cannot connect there.
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", CheckedAdapter())
    with pytest.raises(BlockedAddress):
        session.get("http://2852039166/latest/meta-data/", timeout=2)
    assert connects == []


@pytest.mark.parametrize(("location", "entries", "reason"), [
    (f"http://{METADATA}/latest/meta-data/iam?sig=SECRETSIG", (), "host_not_allowed"),
    (f"http://{METADATA}/latest/meta-data/iam?sig=SECRETSIG", (METADATA,), "blocked_address"),
    ("http://metadata.test/computeMetadata/v1/?sig=SECRETSIG", ("metadata.test",),
     "blocked_address"),
    ("http://[::ffff:169.254.169.254]/?sig=SECRETSIG", ("[::ffff:169.254.169.254]",),
     "blocked_address"),
    ("http://[fe80::1]/?sig=SECRETSIG", ("[fe80::1]",), "blocked_address"),
    ("http://2852039166/?sig=SECRETSIG", ("2852039166",), "bad_reference"),
])
def test_redirect_hops_to_metadata_are_refused(loopback: LoopbackServer, dns: FakeDNS,
                                               connects: list[str], location: str,
                                               entries: tuple[str, ...], reason: str) -> None:
    dns.answers["metadata.test"] = [METADATA]
    with LoopbackServer() as outside:
        outside.add("/bounce", status=302, headers={"Location": location})
        loopback.add("/tasks/5/presign/", status=303, headers={"Location": location})
        for start in (f"{outside.base}/bounce", "azure-blob://c/k.png"):
            fetcher = fetcher_for(loopback, f"127.0.0.1:{outside.port}", *entries)
            with pytest.raises(ImageError) as info:
                fetcher.fetch(start, 5)
            assert info.value.reason == reason, start
            assert "SECRETSIG" not in str(info.value)
    assert METADATA not in connects and not any(a.startswith("fe80") for a in connects)


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
        self.imported.extend(tasks)


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
