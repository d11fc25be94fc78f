"""Which addresses a download may reach, and connections that go only where the check said.

A request names URLs (`image`, `replicate_weights`, `input_images`, …), and a URL may name the
server's own network: 127.0.0.1, the cloud metadata service at 169.254.169.254, a database on
10.x. Fetching those would hand their answers, or at least their existence, to the client. So
each connection resolves its host once, refuses unless every address it resolves to is public
(or on the operator's allow-list, `SDXL_TUNER_ALLOWED_HOSTS`), and then connects to exactly the
address it checked: no second lookup that could answer differently (DNS rebinding). Redirects
open new connections through the same session, so every hop is checked. A refused URL gets one
message whatever is there, and no connection is attempted. Sessions ignore the environment's
proxies (`trust_env=False`): a proxy would hide the real destination from the check.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

ALLOWED_HOSTS_VARIABLE = "SDXL_TUNER_ALLOWED_HOSTS"
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"{LABEL}(\.{LABEL})*")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(Exception):
    """A URL's host is not a public address and not on the allow-list. (Not an OSError, so
    urllib3 and requests pass it through instead of retrying or rewording it.)"""


@dataclass(frozen=True)
class AllowList:
    """The operator's exceptions to "public addresses only": host names (as written in URLs)
    and networks (an address is a /32 or /128)."""

    names: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """`SDXL_TUNER_ALLOWED_HOSTS`: comma-separated host names, addresses and CIDR ranges."""
        names, networks = set(), []
        for entry in filter(None, (part.strip() for part in text.split(","))):
            network = _network(entry)
            if network is not None:
                networks.append(network)
            elif HOST_NAME.fullmatch(entry.rstrip(".")):
                names.add(entry.rstrip(".").lower())
            else:
                raise ValueError(
                    f"{ALLOWED_HOSTS_VARIABLE}: {entry!r} is not a host name, an IP address or a "
                    "CIDR range (e.g. files.internal, 10.0.0.5, 10.0.0.0/8)."
                )
        return cls(frozenset(names), tuple(networks))

    def admits(self, host: str, address: Address) -> bool:
        if host.rstrip(".").lower() in self.names:
            return True
        address = _unwrapped(address)
        return any(address in network for network in self.networks)


def is_public(address: Address) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local
    (169.254.169.254, the cloud metadata service), shared (100.64/10), multicast, reserved or
    unspecified, also when an IPv6 address carries an IPv4 one."""
    unwrapped = _unwrapped(address)
    if unwrapped is not address:
        return is_public(unwrapped)
    if address.version == 6 and address.is_site_local:  # deprecated, but still not public
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def checked_addresses(host: str, port: int, allowed: AllowList) -> list[str]:
    """Every address `host` resolves to, if each is public or allowed; else AddressRefused.
    A name that does not resolve raises socket.gaierror."""
    found = socket.getaddrinfo(host.strip("[]"), port, allowed_gai_family(), socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])  # no IPv6 zone in the check
        if not (is_public(address) or allowed.admits(host, address)):
            raise AddressRefused(host)
    return addresses


def checked_session(allowed: AllowList) -> requests.Session:
    """A requests session whose every connection (redirects included) is checked."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    adapter = _CheckedAdapter(allowed)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _CheckedConnection:
    """Mixed into urllib3's connections: connect to the checked addresses only. The host
    name stays the connection's `host`, so the Host header and TLS (SNI, the certificate's
    name) are the name's; only the socket goes to the address."""

    allowed: AllowList
    _dns_host: str

    def _new_conn(self):
        name = self._dns_host
        try:
            addresses = checked_addresses(name, self.port, self.allowed)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        failure = None
        for address in addresses:
            self._dns_host = address  # what urllib3 connects to; nothing resolves it again
            try:
                return super()._new_conn()
            except NewConnectionError as error:  # the next address, as urllib3 would
                failure = error
            finally:
                self._dns_host = name
        raise failure


def _pool(base: type, connection: type, allowed: AllowList) -> type:
    checked = type(f"Checked{connection.__name__}", (_CheckedConnection, connection), {})
    checked.allowed = allowed
    return type(f"Checked{base.__name__}", (base,), {"ConnectionCls": checked})


class _CheckedAdapter(HTTPAdapter):
    def __init__(self, allowed: AllowList):
        self.allowed = allowed  # before HTTPAdapter.__init__, which makes the pool manager
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _pool(HTTPConnectionPool, HTTPConnection, self.allowed),
            "https": _pool(HTTPSConnectionPool, HTTPSConnection, self.allowed),
        }


def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


def _unwrapped(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or 6to4 (2002::/16) one."""
    if address.version == 6:
        return address.ipv4_mapped or address.sixtofour or address
    return address
