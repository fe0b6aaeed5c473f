"""CurveZMQ on the bus: key files, the broker's allowlists and pyzmq's ZAP authenticator.

The cryptography is libzmq's CURVE; who may connect is decided by pyzmq's
ZAP authenticator (:mod:`zmq.auth`), which asks :class:`Gatekeeper` whether
a public key is in either allowlist. What a connected key may *do*, register
as a worker or send requests as a client, is decided for every message by
``broker.state`` from the User-Id that ZAP gives the connection: its public
key, in z85 text.

Keys are files in ZeroMQ's certificate format, as ``llmapi bus keygen``
writes them: ``NAME.key`` (public) and ``NAME.key_secret`` (both halves,
mode 0600). A key's name is its file name without ``.key``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from config.settings import ConfigError, CurveSettings

log = structlog.get_logger(__name__)

# The plain (not asyncio) ZeroMQ sockets and contexts of every peer of the bus.
Socket: TypeAlias = "zmq.Socket[bytes]"
Context: TypeAlias = "zmq.Context[Socket]"

WORKER_ROLE = "worker"
CLIENT_ROLE = "client"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# A key's name is a file name and the client's identity in logs and status.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Unknown keys are logged once each; past this many the memory of them starts afresh.
MAX_REMEMBERED_REFUSALS = 10_000


@dataclass(frozen=True, slots=True)
class Allowlists:
    """The public keys (z85 text) that may act as workers and as clients, each with its name."""

    workers: Mapping[str, str]
    clients: Mapping[str, str]

    def names(self, role: str) -> Mapping[str, str]:
        return self.workers if role == WORKER_ROLE else self.clients

    def admits(self, key: str) -> bool:
        """Whether ``key`` may connect at all, in either role."""
        return key in self.workers or key in self.clients

    @classmethod
    def load(cls, workers: str | os.PathLike[str], clients: str | os.PathLike[str]) -> Allowlists:
        """Both folders' keys; ConfigError when a folder cannot be read."""
        return cls(read_allowlist(workers), read_allowlist(clients))


def read_allowlist(folder: str | os.PathLike[str]) -> dict[str, str]:
    """z85 public key -> name for every ``NAME.key`` in ``folder``. A file that is not
    a certificate (one being copied in, say) is logged and skipped."""
    directory = Path(folder)
    if not directory.is_dir():
        raise ConfigError(f"the key folder {folder} does not exist or is not a folder")
    keys: dict[str, str] = {}
    for path in sorted(directory.glob("*" + PUBLIC_SUFFIX)):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            log.warning("key_file_skipped", path=str(path), reason=str(exc))
            continue
        keys.setdefault(public.decode("ascii"), path.name.removesuffix(PUBLIC_SUFFIX))
    return keys


def folder_state(*folders: str | os.PathLike[str]) -> tuple[tuple[str, int, int], ...]:
    """Name, modification time and size of every key file in ``folders``: it changes when a key
    is added, removed or rewritten (empty for a folder that cannot be read)."""
    found = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(PUBLIC_SUFFIX):
                try:
                    info = entry.stat()
                except OSError:
                    continue
                found.append((entry.path, info.st_mtime_ns, info.st_size))
    return tuple(sorted(found))


def write_key_pair(name: str, folder: str | os.PathLike[str], replace: bool = False) -> tuple[Path, Path]:
    """A new key pair as ``folder/NAME.key`` and ``folder/NAME.key_secret`` (mode 0600, never
    readable by others, even for a moment); ConfigError if they exist and not ``replace``."""
    if not KEY_NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r} must be a letter or digit, then up to 63 of those or '.', '_', '-'")
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / (name + PUBLIC_SUFFIX), directory / (name + SECRET_SUFFIX)
    if not replace and (public.exists() or secret.exists()):
        raise ConfigError(f"{public} or {secret} exists already: pass --force to replace the pair")
    # Written in a private scratch folder (mode 0700), then moved into place with their modes set.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keygen-") as scratch:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    return public, secret


def load_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The (public, secret) z85 keys of a secret certificate; ConfigError if it has no secret half."""
    try:
        public, secret = zmq.auth.load_certificate(path)
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key pair {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key: name the NAME{SECRET_SUFFIX} file, not NAME{PUBLIC_SUFFIX}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret_key_readable_by_others", path=str(path), mode=oct(stat.S_IMODE(mode)))
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc}") from None
    return public


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A peer's CURVE key pair and the broker's public key, z85-encoded.

    Build one with :meth:`load` and pass it to a client or worker; its
    sockets then encrypt everything and check that they reach that broker.
    """

    public: bytes
    secret: bytes
    broker: bytes

    @classmethod
    def load(cls, key_file: str | os.PathLike[str], broker_key_file: str | os.PathLike[str]) -> CurveKeys:
        """From this peer's ``NAME.key_secret`` and the broker's ``NAME.key``."""
        public, secret = load_key_pair(key_file)
        return cls(public, secret, load_public_key(broker_key_file))

    def apply(self, socket: Socket) -> None:
        """Make ``socket`` a CURVE client of the broker (before it connects)."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.broker)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def connect_to_broker(context: Context, socket_type: int, endpoint: str, curve: CurveKeys | None) -> Socket:
    """A peer's socket connected to the broker at ``endpoint``, with CURVE when ``curve`` is given."""
    socket = context.socket(socket_type)
    socket.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(socket)
    socket.connect(endpoint)
    return socket


def peer_keys(curve: CurveSettings, setting: str) -> CurveKeys | None:
    """The keys a peer reads from ``curve.<setting>`` (``worker_key``, ``frontend_key`` or
    ``client_key``) and ``curve.broker_key``; None when the bus is plaintext."""
    if curve.broker_key is None:
        return None
    own = getattr(curve, setting)
    if own is None:
        raise ConfigError(f"curve.{setting} must name this peer's secret key, since curve.broker_key is set")
    return CurveKeys.load(own, curve.broker_key)


def is_local_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is reachable from this host only: ipc, inproc or TCP on loopback."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface or a host name: it may be reachable from elsewhere
        return False


def check_plaintext_bind(endpoint: str, allow_plaintext: bool) -> None:
    """Refuse, in one line, to bind ``endpoint`` without CURVE where other hosts can reach it."""
    if not (allow_plaintext or is_local_endpoint(endpoint)):
        raise ConfigError(
            f"refusing to bind {endpoint} without CURVE: set curve.server_key and the allowlists "
            "(docs/deploy.md), bind only loopback or ipc, or set broker.allow_plaintext = true"
        )


class Gatekeeper:
    """The broker's side of CURVE: its key pair, its two allowlists and the ZAP
    authenticator that lets only listed keys connect.

    ``curve`` names the broker's secret certificate and the allowlist folders;
    ``context`` is the ZeroMQ context of the socket it guards (a context holds
    one authenticator). :meth:`reload` re-reads the folders; a folder that
    cannot be read then keeps the lists it had, and says so.
    """

    def __init__(self, curve: CurveSettings, context: Context) -> None:
        if curve.server_key is None or curve.workers is None or curve.clients is None:
            raise ConfigError("the broker needs curve.server_key, curve.workers and curve.clients for CURVE")
        self.public, self.secret = load_key_pair(curve.server_key)
        self.folders = (curve.workers, curve.clients)
        self.allowlists = Allowlists.load(*self.folders)
        self._seen = folder_state(*self.folders)
        self._refused: set[str] = set()
        self._authenticator = ThreadAuthenticator(context)

    def start(self) -> None:
        """Answer ZAP requests from now on (before the guarded socket binds)."""
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", credentials_provider=self)
        log.info("curve_enabled", workers=len(self.allowlists.workers), clients=len(self.allowlists.clients))

    def stop(self) -> None:
        self._authenticator.stop()

    def apply(self, socket: Socket) -> None:
        """Make ``socket`` a CURVE server with the broker's key pair (before it binds)."""
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question, on the authenticator's thread: may ``key`` (z85) connect?"""
        text = key.decode("ascii")
        if self.allowlists.admits(text):
            return True
        if text not in self._refused:
            if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
                self._refused.clear()
            self._refused.add(text)
            log.warning("unknown_key_refused", key=text)
        return False

    def changed(self) -> bool:
        """Whether a key file was added, removed or rewritten since the last (re)load."""
        return folder_state(*self.folders) != self._seen

    def reload(self) -> Allowlists:
        """Re-read both folders and return the lists now in force."""
        self._seen = folder_state(*self.folders)
        try:
            allowlists = Allowlists.load(*self.folders)
        except ConfigError as exc:
            log.error("allowlists_not_reloaded", reason=str(exc))
            return self.allowlists
        self.allowlists = allowlists
        self._refused.clear()
        log.info(
            "allowlists_reloaded",
            workers=sorted(allowlists.workers.values()),
            clients=sorted(allowlists.clients.values()),
        )
        return allowlists


class HandshakeWatch:
    """Why the broker refused this peer's connection, if it did: a monitor of
    ``socket``'s failed handshakes (a key not in the allowlists, CURVE on one
    side only, the wrong broker key), which ZeroMQ otherwise retries in silence.
    Poll :attr:`monitor` and call :meth:`failure` when it is readable.
    """

    EVENTS = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self.monitor = socket.get_monitor_socket(self.EVENTS)

    def failure(self) -> str | None:
        """The last failed handshake waiting on the monitor, described, or None."""
        described = None
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                described = f"the broker refused this key (ZAP status {event['value']}): it is not in its allowlists"
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                described = "the handshake failed: CURVE on one side only, or a protocol error"
            else:
                described = "the handshake failed: the wrong broker key (curve.broker_key), or CURVE on one side only"
        return described

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
