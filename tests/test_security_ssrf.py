"""SSRF, each case tested where it can fail: what allowed names resolve to (metadata
addresses, DNS rebinding, IPv6 forms, the connected peer), IP literal spellings and redirect
hops."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.core.errors import ImageError
from backend.labelstudio.client import LabelStudioAuth
from backend.media.addresses import BlockedAddress, CheckedAdapter, blocked_reason
from backend.media.images import ImageFetcher
from tests import media
from tests.httpserver import LoopbackServer

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
