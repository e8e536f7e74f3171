"""Kafka broker addresses: the ``kafka://host:port[;host:port]`` form, checked in one place.

Every ``rum`` command that talks to Kafka checks its broker address here before
it connects: :func:`parse_broker` refuses a malformed address, and
:func:`probe` opens a plain TCP connection to each bootstrap server with a short
timeout, so an unreachable broker is one clear line within seconds instead of a
client library retrying for half a minute and ending in a traceback.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

DEFAULT_BROKER = "kafka://127.0.0.1:9092"
FORM = "kafka://host:port[;host:port]"
PROBE_TIMEOUT_S = 3.0
# A host name, an IPv4 address, or a bracketed IPv6 address.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?)$")


class BrokerError(ValueError):
    """The broker address is malformed or no bootstrap server answers; fix it or start one."""


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _server(part: str, url: str) -> Server:
    scheme, sep, rest = part.rpartition("://")
    if sep and scheme != "kafka":
        msg = f"broker address {url!r}: unsupported scheme {scheme + '://'!r}; expected {FORM}"
        raise BrokerError(msg)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isdigit():
        msg = f"broker address {url!r}: {rest!r} has no port; expected {FORM}"
        raise BrokerError(msg)
    port = int(port_text)
    if not 0 < port < 65536:
        msg = f"broker address {url!r}: port {port} is out of range (1-65535); expected {FORM}"
        raise BrokerError(msg)
    if not _HOST.match(host):
        msg = f"broker address {url!r}: {host!r} is not a host name or address; expected {FORM}"
        raise BrokerError(msg)
    return Server(host.strip("[]"), port)


def parse_broker(url: str) -> list[Server]:
    """The bootstrap servers of ``url`` (``kafka://a:1;b:2``, ``a:1,b:2`` also accepted).

    Raises :class:`BrokerError` naming what is wrong and the expected form.
    """
    parts = [part.strip() for part in url.replace(",", ";").split(";")]
    if not any(parts):
        msg = f"the broker address is empty; expected {FORM}"
        raise BrokerError(msg)
    return [_server(part, url) for part in parts if part]


def bootstrap_servers(url: str) -> str:
    """``kafka://a:1;b:2`` -> ``a:1,b:2`` (kafka-python's ``bootstrap_servers``)."""
    return ",".join(f"{s.host}:{s.port}" for s in parse_broker(url))


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S, option: str = "--broker") -> None:
    """Return once one bootstrap server of ``url`` accepts a TCP connection.

    Raises :class:`BrokerError` (one line: every server with why it failed, and
    what to do) when the address is malformed or none accepts within ``timeout_s``.
    """
    failures: list[str] = []
    for server in parse_broker(url):
        try:
            with socket.create_connection((server.host, server.port), timeout=timeout_s):
                return
        except OSError as exc:
            failures.append(f"{server}: {_reason(exc)}")
    msg = (
        f"cannot reach the Kafka broker {url} ({'; '.join(failures)}); start one with "
        f"`rum kafka start` and export the RUM_BROKER line it prints, or pass {option}"
    )
    raise BrokerError(msg)
