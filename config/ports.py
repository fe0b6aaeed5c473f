"""Whether the addresses `llmapi up` is about to listen on can be had, checked before it starts anything."""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple


class Listener(NamedTuple):
    """An address a process of the stack will listen on, and the option that moves it."""

    host: str
    port: int
    what: str
    option: str


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ZeroMQ ``tcp://HOST:PORT`` endpoint; None for another transport or port."""
    transport, separator, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if transport != "tcp" or not separator or not port.isdigit():
        return None
    host = host.strip("[]")
    return ("0.0.0.0" if host == "*" else host), int(port)


def bind_problem(host: str, port: int) -> str | None:
    """Why a listening socket could not be bound at ``(host, port)``, or None when it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As Tornado and ZeroMQ bind: a port that only has connections closing (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "is already in use"
            return f"cannot be listened on: {error.strerror or error}"
    return None


def first_problem(listeners: list[Listener]) -> str | None:
    """One line about the first listener whose address cannot be bound, or None when all can."""
    for listener in listeners:
        problem = bind_problem(listener.host, listener.port)
        if problem is not None:
            return (
                f"the {listener.what} {listener.host}:{listener.port} {problem}; "
                f"stop what holds it or choose another with {listener.option}"
            )
    return None


def local_host(host: str) -> str:
    """Where this machine reaches a listener bound to ``host``: a wildcard host on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def connectable(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``(host, port)`` (a wildcard host means this machine)."""
    try:
        with socket.create_connection((local_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False
