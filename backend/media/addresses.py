"""Which network addresses image fetches may connect to, enforced where the socket is opened.

The host allowlist (`backend/media/images.py`) says which *names* may be fetched; this module says
which *addresses* a connection may reach. An allowed name can still lead to the cloud metadata
service: a DNS record pointed there, or DNS rebinding (a harmless answer when a separate check
looks the name up, the metadata address when the HTTP client looks it up again to connect). So
the check lives inside the connection: the name is resolved once, every answer is checked, and
the socket connects to the address that was checked; the Host header and TLS SNI still carry the
name. The peer of the connected socket is checked again before a byte is sent.

Loopback and private addresses stay allowed (a self-hosted Label Studio, Azurite, tests: the
name must still be allowlisted). Never allowed: link-local (169.254.0.0/16, fe80::/10, which
hold the AWS/Azure/GCP metadata service 169.254.169.254), the other clouds' metadata and host
addresses below, unspecified ("this network" 0.0.0.0/8, ::), multicast and reserved addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from backend.core.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BLOCKED_NETWORKS = tuple(ipaddress.ip_network(network) for network in (
    "0.0.0.0/8",           # "this network": a connect to 0.0.0.0 reaches the local host
    "169.254.0.0/16",      # link-local: 169.254.169.254 is AWS/Azure/GCP/OpenStack metadata
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "168.63.129.16/32",    # Azure WireServer (platform host agent), a public address
    "192.0.0.192/32",      # Oracle Cloud metadata (legacy address)
    "fe80::/10",           # link-local
    "fec0::/10",           # site-local (deprecated, still routed on some networks)
    "fd00:ec2::254/128",   # AWS metadata over IPv6
))
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # DNS64: IPv4 addresses seen as IPv6


def _effective(address: IPAddress) -> list[IPAddress]:
    """The addresses a packet to `address` actually reaches: itself, or for IPv4-mapped and
    NAT64 addresses the embedded IPv4 one; 6to4 addresses also carry a reachable IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address in NAT64_PREFIX:
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
    return [address]


def blocked_reason(address: str) -> str | None:
    """Why the backend must not connect to `address` (a numeric IP), or None when it may."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return "not a numeric address"
    for candidate in _effective(parsed):
        if any(candidate in network for network in BLOCKED_NETWORKS):
            return "link-local or cloud metadata address"
        if candidate.is_loopback:
            continue  # before is_reserved: ::1 lies in the reserved ::/8
        if candidate.is_unspecified:
            return "unspecified address"
        if candidate.is_multicast:
            return "multicast address"
        if candidate.is_link_local:
            return "link-local address"
        if candidate.is_reserved:
            return "reserved address"
    return None


class BlockedAddress(ImageError):
    """A fetch would have connected to an address the backend never connects to."""

    def __init__(self, host: str, address: str, why: str) -> None:
        where = f"image host {address}" if host == address else \
            f"image host {host} resolves to {address}"
        super().__init__(
            f"{where}: a {why}; the backend never connects to link-local, cloud metadata, "
            "unspecified, multicast or reserved addresses", reason="blocked_address")


def connect_checked(host: str, port: int, timeout: Any, source_address: Any = None,
                    socket_options: Any = None) -> socket.socket:
    """A socket connected to `host`: one lookup, every answer checked, then a connect to the
    checked address itself (no second lookup an attacker's DNS could answer differently)."""
    host = host.strip("[]")
    answers = socket.getaddrinfo(host, port, urllib3.util.connection.allowed_gai_family(),
                                 socket.SOCK_STREAM)
    # Any bad answer refuses the name: a rebinding attacker serves good and bad ones together.
    for *_, sockaddr in answers:
        why = blocked_reason(str(sockaddr[0]))
        if why:
            raise BlockedAddress(host, str(sockaddr[0]), why)
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in answers:
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if isinstance(timeout, int | float) or timeout is None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            peer = str(sock.getpeername()[0])
            why = blocked_reason(peer)
            if why:
                raise BlockedAddress(host, peer, why)
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
    raise error or OSError(f"no address found for {host}")


class _CheckedConnect:
    """Replaces urllib3's `_new_conn` with `connect_checked`, keeping its exception types."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        try:
            return connect_checked(self._dns_host, self.port, self.timeout,
                                   self.source_address, self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:  # socket.gaierror included
            raise NewConnectionError(self, f"failed to connect: {exc}") from exc  # type: ignore[arg-type]


class CheckedHTTPConnection(_CheckedConnect, urllib3.connection.HTTPConnection):
    """An HTTP connection that only reaches allowed addresses."""


class CheckedHTTPSConnection(_CheckedConnect, urllib3.connection.HTTPSConnection):
    """An HTTPS connection that only reaches allowed addresses (SNI and certificate checks
    still use the host name)."""


class CheckedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class CheckedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


class CheckedAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose connections go through `connect_checked`; no proxies (a proxy
    would connect on our behalf, to addresses we never see)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": CheckedHTTPConnectionPool,
                                                   "https": CheckedHTTPSConnectionPool}

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        raise ImageError("image fetches do not go through proxies", reason="fetch_failed")
