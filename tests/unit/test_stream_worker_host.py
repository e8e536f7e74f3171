"""RUM_WEB_HOST: the address a worker announces for request routing."""

from __future__ import annotations

import socket

import pytest

from stream.worker import AnnouncedHostError, announced_host


def test_a_plain_host_is_announced_as_given() -> None:
    assert announced_host("worker-3.internal") == "worker-3.internal"
    assert announced_host("127.0.0.1") == "127.0.0.1"


def test_at_hostname_and_at_ip_name_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "3f2a9c1d7e4b")  # a container id
    monkeypatch.setattr(socket, "gethostbyname", {"3f2a9c1d7e4b": "172.18.0.5"}.__getitem__)
    assert announced_host("@hostname") == "3f2a9c1d7e4b"
    assert announced_host("@ip") == "172.18.0.5"


def test_at_ip_names_the_host_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    def unresolvable(name: str) -> str:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "gethostname", lambda: "lonely")
    monkeypatch.setattr(socket, "gethostbyname", unresolvable)
    with pytest.raises(AnnouncedHostError, match="'lonely' does not resolve"):
        announced_host("@ip")
