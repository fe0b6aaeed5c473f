"""Every byte on the wire: building and parsing the bus's messages.

The protocol follows ZeroMQ's Majordomo (7/MDP, revision 0.2) and is written
down in ``docs/protocol.md``. A message travels as ZeroMQ frames::

    [routing envelope ...] [empty delimiter] [header] [command] [fields ...]

The envelope is what ROUTER sockets add (one identity frame per hop); it is
split from the message at the first empty frame by :func:`split_envelope`
and put back by :func:`join_envelope`. ``encode`` and ``decode`` are mirror
images: ``decode(encode(m)) == m`` for every message class below. Nothing
outside this module indexes frames.

From version 4 a message of two fields or more travels in three frames: the
header, one frame that holds its command and its other fields (each
length-prefixed, see :func:`pack_fields`), and its body as it is (the field
``body_at`` names; the last field of a message without a body). Fewer frames
cost the sockets less (each frame is a send and, under CurveZMQ, an
encryption of its own).

The header states the protocol version of every message: ``LLMC`` or
``LLMW`` (client or worker side) and two digits. This code speaks every
version of :data:`SUPPORTED_VERSIONS` (``LLMC01`` and ``LLMW01`` are the
headers of every peer released before versions were counted); each message
carries the version it came in or is to be sent in, so the broker answers
each peer in its own, and each message class says from which version on it
exists (``since``): under the header of an older version it is malformed,
never read as if that version had it. A header of any other version raises
:class:`~broker.errors.UnsupportedVersion`, not a plain ProtocolError, so
the peer can be told why it is refused.
"""

from __future__ import annotations

import array
import dataclasses
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from broker.errors import ProtocolError, UnsupportedVersion

# The version this code speaks; the earlier ones are still accepted and answered in kind.
VERSION = 4
PREVIOUS_VERSION = 3
FIRST_VERSION = 1
SUPPORTED_VERSIONS = (FIRST_VERSION, 2, PREVIOUS_VERSION, VERSION)
# From this version on, a worker is sent requests as slots free up, not only when idle (see docs/protocol.md).
SLOTS_VERSION = 3
# From this version on, a message's command and fields but its last travel packed in one frame.
PACKED_VERSION = 4
_LENGTH = struct.Struct("<I")
CLIENT_SIDE = b"LLMC"
WORKER_SIDE = b"LLMW"


def header_for(side: bytes, version: int) -> bytes:
    """The header frame of ``side`` (CLIENT_SIDE or WORKER_SIDE) at ``version`` (0 to 99)."""
    return b"%s%02d" % (side, version)


CLIENT = header_for(CLIENT_SIDE, VERSION)
WORKER = header_for(WORKER_SIDE, VERSION)
# Headers of the versions spoken, looked up rather than formatted on the hot path.
_HEADERS = {
    (side, version): header_for(side, version) for side in (CLIENT_SIDE, WORKER_SIDE) for version in SUPPORTED_VERSIONS
}

READY = b"\x01"
REQUEST = b"\x02"
REPLY = b"\x03"
HEARTBEAT = b"\x04"
DISCONNECT = b"\x05"
ERROR = b"\x06"
CANCEL = b"\x07"
PARTIAL = b"\x08"
FINAL = b"\x09"
BATCH = b"\x0a"
CAPACITY = b"\x0b"

MAX_ID_BYTES = 64
# The most requests one BATCH may carry, and so the largest capacity a worker may declare.
MAX_BATCH = 1024
MAX_NAME_BYTES = 128
# The largest round-robin weight a tenant may have: requests it may take per turn.
MAX_WEIGHT = 1000
STREAM_FLAG = "stream"
KNOWN_FLAGS = frozenset({STREAM_FLAG})

Frames = list[bytes]
Envelope = tuple[bytes, ...]


def _text(frame: bytes, what: str, limit: int) -> str:
    if not 0 < len(frame) <= limit:
        raise ProtocolError(f"{what} must be 1 to {limit} bytes")
    try:
        text = frame.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} must be ASCII") from None
    if not text.isprintable():
        raise ProtocolError(f"{what} must be printable")
    return text


def _uint(frame: bytes, what: str) -> int:
    if not frame.isdigit() or len(frame) > 12:
        raise ProtocolError(f"{what} must be a decimal number")
    return int(frame)


def _flags(frame: bytes) -> bool:
    flags = set(frame.decode("ascii", "replace").split(",")) - {""}
    unknown = flags - KNOWN_FLAGS
    if unknown:
        raise ProtocolError(f"unknown flags {sorted(unknown)}")
    return STREAM_FLAG in flags


def _optional_text(frame: bytes, what: str, limit: int) -> str:
    return _text(frame, what, limit) if frame else ""


def pack_tokens(tokens: Sequence[int]) -> bytes:
    """Token ids as one frame: unsigned 32-bit little-endian integers."""
    packed = array.array("I", tokens)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_tokens(frame: bytes) -> tuple[int, ...]:
    if len(frame) % 4:
        raise ProtocolError("a token frame must hold whole 32-bit ids")
    packed = array.array("I")
    packed.frombytes(frame)
    if sys.byteorder != "little":
        packed.byteswap()
    return tuple(packed)


def _utf8(frame: bytes, what: str) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} must be UTF-8") from None


def _expect_fields(cls: type, count: int, allowed: tuple[int, ...], version: int) -> None:
    if count not in allowed:
        counts = " or ".join(str(n) for n in allowed)
        raise ProtocolError(f"{cls.__name__} of version {version} needs {counts} fields, got {count}")


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message; subclasses declare their side, command and fields.

    ``version`` is the protocol version the message came in, or is to be
    sent in (a keyword argument, the current version by default).
    """

    side: ClassVar[bytes]
    command: ClassVar[bytes]
    field_count: ClassVar[int]
    # The first protocol version that carries this message: under an older header it is malformed.
    since: ClassVar[int] = FIRST_VERSION
    # Which of its fields is its body, the frame of its own from version 4 (None: its last).
    body_at: ClassVar[int | None] = None
    version: int = dataclasses.field(default=VERSION, kw_only=True)

    @property
    def header(self) -> bytes:
        return _HEADERS.get((self.side, self.version)) or header_for(self.side, self.version)

    def fields(self) -> Frames:
        return []

    @classmethod
    def carried_in(cls, version: int) -> bool:
        return version >= cls.since

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        if count != cls.field_count:
            raise ProtocolError(f"{cls.__name__} needs {cls.field_count} fields, got {count}")

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> Message:
        return cls()

    @classmethod
    def parse(cls, fields: Sequence[bytes], version: int) -> Message:
        """The message of ``fields`` (their count already checked) in ``version``."""
        return cls.from_fields(fields)


# -- client <-> broker ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Share:
    """Whom a request is for, for fair queuing: the ``tenant`` (an API key, as the
    frontend names it), the most requests it may have queued or running at once
    (``max_concurrent``, 0 for no limit) and its ``weight`` in the round robin."""

    tenant: str
    max_concurrent: int = 0
    weight: int = 1

    def frame(self) -> bytes:
        return f"{self.tenant};{self.max_concurrent};{self.weight}".encode("ascii")

    @classmethod
    def from_frame(cls, frame: bytes) -> Share:
        parts = frame.split(b";")
        if len(parts) != 3:
            raise ProtocolError("share must be tenant;max_concurrent;weight")
        tenant, max_concurrent, weight = parts
        share = cls(
            _text(tenant, "tenant", MAX_NAME_BYTES), _uint(max_concurrent, "max_concurrent"), _uint(weight, "weight")
        )
        if not 1 <= share.weight <= MAX_WEIGHT:
            raise ProtocolError(f"weight must be 1 to {MAX_WEIGHT}")
        return share


@dataclass(frozen=True, slots=True)
class ClientRequest(Message):
    """A client asks ``service`` to serve ``body`` (JSON) within ``timeout_ms``.

    ``timeout_ms`` 0 means the broker's default; ``stream`` asks for PARTIAL
    messages before the FINAL one when the algorithm produces pieces.
    ``share`` (version 2, optional) names the tenant the request is queued
    for; without it the tenant is the client itself.
    """

    side = CLIENT_SIDE
    command = REQUEST
    field_count = 5
    body_at = 4
    service: str
    request_id: str
    timeout_ms: int
    stream: bool
    body: bytes
    share: Share | None = None

    def fields(self) -> Frames:
        frames = [
            self.service.encode("ascii"),
            self.request_id.encode("ascii"),
            str(self.timeout_ms).encode("ascii"),
            STREAM_FLAG.encode("ascii") if self.stream else b"",
            self.body,
        ]
        if self.share is not None and self.version > 1:
            frames.append(self.share.frame())
        return frames

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (5,) if version == 1 else (5, 6), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> ClientRequest:
        service, request_id, timeout_ms, flags, body = fields[:5]
        return cls(
            _text(service, "service", MAX_NAME_BYTES),
            _text(request_id, "request id", MAX_ID_BYTES),
            _uint(timeout_ms, "timeout"),
            _flags(flags),
            body,
            Share.from_frame(fields[5]) if len(fields) > 5 else None,
        )


@dataclass(frozen=True, slots=True)
class ClientCancel(Message):
    """The client no longer wants the answer to ``request_id``."""

    side = CLIENT_SIDE
    command = CANCEL
    field_count = 1
    request_id: str

    def fields(self) -> Frames:
        return [self.request_id.encode("ascii")]

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> ClientCancel:
        return cls(_text(fields[0], "request id", MAX_ID_BYTES))


@dataclass(frozen=True, slots=True)
class ClientHeartbeat(Message):
    """Liveness ping from a client; the broker answers with the same message.

    ``incarnation`` is None for a heartbeat without the field, which only
    version 1 allows (its first revision). A client sends it empty; the
    broker answers with its own incarnation, a random id drawn at start, so
    that a client can tell a restarted broker, which lost its requests, from
    the old one.
    """

    side = CLIENT_SIDE
    command = HEARTBEAT
    field_count = 1
    incarnation: str | None = ""

    def fields(self) -> Frames:
        return [] if self.incarnation is None else [self.incarnation.encode("ascii")]

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (0, 1) if version == 1 else (1,), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> ClientHeartbeat:
        if not fields:
            return cls(None)
        return cls(_text(fields[0], "incarnation", MAX_ID_BYTES) if fields[0] else "")


@dataclass(frozen=True, slots=True)
class _Answer(Message):
    """Shared shape of REPLY, PARTIAL and FINAL: a request id and a JSON body."""

    field_count = 2
    body_at = 1
    request_id: str
    body: bytes

    def fields(self) -> Frames:
        return [self.request_id.encode("ascii"), self.body]

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> _Answer:
        return cls(_text(fields[0], "request id", MAX_ID_BYTES), fields[1])


@dataclass(frozen=True, slots=True)
class _Failure(Message):
    """Shared shape of ERROR: request id, code, message and the error's type name."""

    field_count = 4
    request_id: str
    code: str
    message: str
    error_type: str = ""

    def fields(self) -> Frames:
        return [
            self.request_id.encode("ascii"),
            self.code.encode("ascii"),
            self.message.encode("utf-8"),
            self.error_type.encode("utf-8"),
        ]

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> _Failure:
        request_id, code, message, error_type = fields
        return cls(
            _text(request_id, "request id", MAX_ID_BYTES),
            _text(code, "error code", MAX_NAME_BYTES),
            _utf8(message, "error message"),
            _utf8(error_type, "error type"),
        )


@dataclass(frozen=True, slots=True)
class ClientReply(_Answer):
    """The whole answer to a request that was not streamed."""

    side = CLIENT_SIDE
    command = REPLY


@dataclass(frozen=True, slots=True)
class ClientPartial(_Answer):
    """One piece of a streamed answer; more follow."""

    side = CLIENT_SIDE
    command = PARTIAL


@dataclass(frozen=True, slots=True)
class ClientFinal(_Answer):
    """The last message of a streamed answer, with the summary body."""

    side = CLIENT_SIDE
    command = FINAL


@dataclass(frozen=True, slots=True)
class ClientError(_Failure):
    """The request failed; ``code`` is from the table in ``broker.errors``."""

    side = CLIENT_SIDE
    command = ERROR


# What the broker tells a client about one of its requests.
ClientAnswer = ClientReply | ClientPartial | ClientFinal | ClientError


# -- worker <-> broker ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerReady(Message):
    """A worker is idle and serves ``service``; ``info`` is JSON (model, device, memory).

    ``capacity`` is how many requests it takes in one dispatch (a BATCH); a
    READY without the field, which only version 1 allows (its first
    revision), means 1.
    """

    side = WORKER_SIDE
    command = READY
    field_count = 3
    service: str
    info: bytes = b"{}"
    capacity: int = 1

    def fields(self) -> Frames:
        return [self.service.encode("ascii"), self.info, str(self.capacity).encode("ascii")]

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (2, 3) if version == 1 else (3,), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerReady:
        capacity = _uint(fields[2], "capacity") if len(fields) == 3 else 1
        if not 1 <= capacity <= MAX_BATCH:
            raise ProtocolError(f"capacity must be 1 to {MAX_BATCH}")
        return cls(_text(fields[0], "service", MAX_NAME_BYTES), fields[1], capacity)


@dataclass(frozen=True, slots=True)
class WorkerRequest(Message):
    """The broker hands a worker one request, which holds one of its slots until answered.

    From version 3 on it also names the ``tenant`` the request is for ("" for
    none) and the tokens a stream already sent from an earlier worker, which
    this one goes on from (``resume``, empty for a fresh request).
    """

    side = WORKER_SIDE
    command = REQUEST
    field_count = 4
    body_at = 3
    request_id: str
    timeout_ms: int
    stream: bool
    body: bytes
    tenant: str = ""
    resume: tuple[int, ...] = ()

    @staticmethod
    def fields_in(version: int) -> int:
        return 6 if version >= SLOTS_VERSION else 4

    def fields(self) -> Frames:
        return self.frames_in(self.version)

    def frames_in(self, version: int) -> Frames:
        """Its fields as ``version`` writes them (a BATCH writes its requests in its own)."""
        frames = [
            self.request_id.encode("ascii"),
            str(self.timeout_ms).encode("ascii"),
            STREAM_FLAG.encode("ascii") if self.stream else b"",
            self.body,
        ]
        if version >= SLOTS_VERSION:
            frames += [self.tenant.encode("ascii"), pack_tokens(self.resume)]
        return frames

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (cls.fields_in(version),), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerRequest:
        request_id, timeout_ms, flags, body = fields[:4]
        request = cls(
            _text(request_id, "request id", MAX_ID_BYTES),
            _uint(timeout_ms, "timeout"),
            _flags(flags),
            body,
        )
        if len(fields) == 4:
            return request
        return dataclasses.replace(
            request, tenant=_optional_text(fields[4], "tenant", MAX_NAME_BYTES), resume=unpack_tokens(fields[5])
        )


@dataclass(frozen=True, slots=True)
class WorkerBatch(Message):
    """The broker hands a worker of capacity above 1 up to that many requests at once.

    Each request is answered on its own (PARTIALs, then REPLY, FINAL or
    ERROR under its id); the worker is busy until every one is answered.
    """

    side = WORKER_SIDE
    command = BATCH
    requests: tuple[WorkerRequest, ...]

    def fields(self) -> Frames:
        return [frame for request in self.requests for frame in request.frames_in(self.version)]

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        size = WorkerRequest.fields_in(version)
        rows, rest = divmod(count, size)
        if rest or not 1 <= rows <= MAX_BATCH:
            raise ProtocolError(f"WorkerBatch needs 1 to {MAX_BATCH} groups of {size} fields, got {count} fields")

    @classmethod
    def parse(cls, fields: Sequence[bytes], version: int) -> WorkerBatch:
        size = WorkerRequest.fields_in(version)
        requests = tuple(
            dataclasses.replace(WorkerRequest.from_fields(fields[i:i + size]), version=version)
            for i in range(0, len(fields), size)
        )
        if len({request.request_id for request in requests}) != len(requests):
            raise ProtocolError("a BATCH names one request id twice")
        return cls(requests)


@dataclass(frozen=True, slots=True)
class WorkerReply(_Answer):
    """A worker's whole answer; it is idle again."""

    side = WORKER_SIDE
    command = REPLY


@dataclass(frozen=True, slots=True)
class WorkerPartial(_Answer):
    """One piece of a streamed answer. From version 3 on it may name the ``tokens``
    the piece was decoded from (every token since the last piece), which the
    broker keeps so that the stream can go on from them on another worker."""

    side = WORKER_SIDE
    command = PARTIAL
    tokens: tuple[int, ...] = ()

    def fields(self) -> Frames:
        frames = [self.request_id.encode("ascii"), self.body]
        return [*frames, pack_tokens(self.tokens)] if self.tokens and self.version >= SLOTS_VERSION else frames

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (2, 3) if version >= SLOTS_VERSION else (2,), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerPartial:
        tokens = unpack_tokens(fields[2]) if len(fields) == 3 else ()
        return cls(_text(fields[0], "request id", MAX_ID_BYTES), fields[1], tokens)


@dataclass(frozen=True, slots=True)
class WorkerFinal(_Answer):
    """The end of a streamed answer; the worker is idle again."""

    side = WORKER_SIDE
    command = FINAL


@dataclass(frozen=True, slots=True)
class WorkerError(_Failure):
    """The worker could not serve the request; it is idle again."""

    side = WORKER_SIDE
    command = ERROR


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat(Message):
    """Liveness, both ways. Never makes a busy worker idle."""

    side = WORKER_SIDE
    command = HEARTBEAT
    field_count = 0


@dataclass(frozen=True, slots=True)
class WorkerDisconnect(Message):
    """Either side ends the session (worker leaving, or broker not knowing it).

    ``reason``, from version 2 on, says why the broker refuses the worker,
    which then reconnects only after a delay; without one, the broker does
    not know the worker, which registers again at once. Version 1 has no
    field for a reason, so none is sent in it.
    """

    side = WORKER_SIDE
    command = DISCONNECT
    field_count = 1
    reason: str | None = None

    def fields(self) -> Frames:
        return [] if self.reason is None or self.version == 1 else [self.reason.encode("utf-8")]

    @classmethod
    def check_field_count(cls, count: int, version: int) -> None:
        _expect_fields(cls, count, (0,) if version == 1 else (0, 1), version)

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerDisconnect:
        return cls(_utf8(fields[0], "reason") if fields else None)


@dataclass(frozen=True, slots=True)
class WorkerCapacity(Message):
    """A worker says how many requests it takes at once from now on (0 to stop taking
    any: it is draining, or its memory is full); the broker never sends more."""

    side = WORKER_SIDE
    command = CAPACITY
    field_count = 1
    since = SLOTS_VERSION
    capacity: int

    def fields(self) -> Frames:
        return [str(self.capacity).encode("ascii")]

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerCapacity:
        capacity = _uint(fields[0], "capacity")
        if capacity > MAX_BATCH:
            raise ProtocolError(f"capacity must be 0 to {MAX_BATCH}")
        return cls(capacity)


@dataclass(frozen=True, slots=True)
class WorkerCancel(Message):
    """The broker tells a worker its current request is no longer wanted."""

    side = WORKER_SIDE
    command = CANCEL
    field_count = 1
    request_id: str

    def fields(self) -> Frames:
        return [self.request_id.encode("ascii")]

    @classmethod
    def from_fields(cls, fields: Sequence[bytes]) -> WorkerCancel:
        return cls(_text(fields[0], "request id", MAX_ID_BYTES))


# Every message of the protocol; a new one is listed here with its ``since``.
MESSAGE_CLASSES: tuple[type[Message], ...] = (
    ClientRequest,
    ClientCancel,
    ClientHeartbeat,
    ClientReply,
    ClientPartial,
    ClientFinal,
    ClientError,
    WorkerReady,
    WorkerRequest,
    WorkerBatch,
    WorkerReply,
    WorkerPartial,
    WorkerFinal,
    WorkerError,
    WorkerHeartbeat,
    WorkerDisconnect,
    WorkerCapacity,
    WorkerCancel,
)
# (header, command) -> (class, version), for every version spoken that carries the message.
_MESSAGES: dict[tuple[bytes, bytes], tuple[type[Message], int]] = {
    (header_for(cls.side, version), cls.command): (cls, version)
    for cls in MESSAGE_CLASSES
    for version in SUPPORTED_VERSIONS
    if cls.carried_in(version)
}
# To say why a message is refused under a header of a version that does not carry it.
_CLASS_OF_COMMAND = {(cls.side, cls.command): cls for cls in MESSAGE_CLASSES}
_VERSION_OF_HEADER = {header: version for (_, version), header in _HEADERS.items()}


def encode(message: Message, delimiter: bool = True) -> Frames:
    """Frames of ``message`` in its version, from the empty delimiter on (no envelope).

    REQ sockets add and strip the delimiter themselves: pass ``delimiter=False``.
    """
    fields = message.fields()
    if message.version >= PACKED_VERSION and len(fields) > 1:
        body = fields.pop(len(fields) - 1 if message.body_at is None else message.body_at)
        frames = [message.header, message.command + pack_fields(fields), body]
    else:
        frames = [message.header, message.command, *fields]
    return [b"", *frames] if delimiter else frames


def pack_fields(fields: Sequence[bytes]) -> bytes:
    """Fields as one frame: each its length (unsigned 32-bit little-endian), then its bytes."""
    return b"".join(_LENGTH.pack(len(field)) + field for field in fields)


def unpack_fields(packed: bytes) -> list[bytes]:
    """The fields :func:`pack_fields` packed; ProtocolError when they do not fill it exactly."""
    fields: list[bytes] = []
    at = 0
    while at < len(packed):
        if at + _LENGTH.size > len(packed):
            raise ProtocolError("a packed field's length is cut short")
        (length,) = _LENGTH.unpack_from(packed, at)
        at += _LENGTH.size
        if at + length > len(packed):
            raise ProtocolError("a packed field runs past its frame")
        fields.append(packed[at:at + length])
        at += length
    return fields


def _unpacked(frames: Sequence[bytes]) -> list[bytes]:
    """A message's frames from the header on, with a packed command frame (version 4 on) opened
    and its body put back in its place: header, command, fields."""
    header, command = frames[0], frames[1]
    if len(command) <= 1 or _VERSION_OF_HEADER.get(header, 0) < PACKED_VERSION:
        return list(frames)
    if len(frames) != 3:
        raise ProtocolError("a packed message is its header, its packed fields and its body")
    fields = unpack_fields(command[1:])
    cls = _CLASS_OF_COMMAND.get((header[:4], command[:1]))
    body_at = None if cls is None else cls.body_at
    fields.insert(len(fields) if body_at is None else min(body_at, len(fields)), frames[2])
    return [header, command[:1], *fields]


def decode(frames: Sequence[bytes], delimiter: bool = True) -> Message:
    """The message in ``frames`` (from the empty delimiter on); ProtocolError if malformed."""
    if delimiter:
        if not frames or frames[0] != b"":
            raise ProtocolError("message must start with an empty delimiter")
        frames = frames[1:]
    if len(frames) < 2:
        raise ProtocolError("message must have a header and a command")
    frames = _unpacked(frames)
    known = _MESSAGES.get((frames[0], frames[1]))
    if known is None:
        _check_version(frames[0])
        raise ProtocolError(_not_carried(frames[0], frames[1]))
    cls, version = known
    fields = frames[2:]
    cls.check_field_count(len(fields), version)
    message = cls.parse(fields, version)
    return message if version == VERSION else dataclasses.replace(message, version=version)


def _not_carried(header: bytes, command: bytes) -> str:
    """Why ``header`` and ``command`` name no message: they are unknown, or the version
    of the header does not carry the message of the command."""
    version = _VERSION_OF_HEADER.get(header)
    cls = _CLASS_OF_COMMAND.get((header[:4], command))
    if version is None or cls is None:
        return f"unknown header {header[:16]!r} or command {command[:4]!r}"
    return f"{cls.__name__} is carried from protocol version {cls.since} on, not in version {version}"


def _check_version(frame: bytes) -> None:
    """Raise UnsupportedVersion for a well-formed header of a version not spoken here."""
    side, digits = frame[:4], frame[4:]
    if side in (CLIENT_SIDE, WORKER_SIDE) and len(digits) == 2 and digits.isdigit():
        version = int(digits)
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(side.decode("ascii"), version, SUPPORTED_VERSIONS)


def salvage_request_id(frames: Sequence[bytes]) -> str | None:
    """The request id of a malformed client REQUEST (of any version), when one can
    be read, so the client can be told why instead of waiting out its deadline."""
    if len(frames) < 3 or frames[0] != b"" or frames[1][:4] != CLIENT_SIDE:
        return None
    try:
        frames = [b"", *_unpacked(frames[1:])]
        if len(frames) < 5 or frames[2] != REQUEST:
            return None
        return _text(frames[4], "request id", MAX_ID_BYTES)
    except ProtocolError:
        return None


def header_version(frames: Sequence[bytes]) -> int:
    """The version a message's header states (from the empty delimiter on); the
    current version when it states none that can be read."""
    digits = frames[1][4:] if len(frames) > 1 else b""
    return int(digits) if len(digits) == 2 and digits.isdigit() else VERSION


def split_envelope(frames: Sequence[bytes]) -> tuple[Envelope, list[bytes]]:
    """Split a ROUTER message into its routing envelope and the rest (delimiter first)."""
    try:
        delimiter = frames.index(b"")
    except ValueError:
        raise ProtocolError("message has no empty delimiter") from None
    if delimiter == 0:
        raise ProtocolError("message has no routing envelope")
    return tuple(frames[:delimiter]), list(frames[delimiter:])


def join_envelope(envelope: Envelope, message: Message) -> Frames:
    """Frames that a ROUTER sends to deliver ``message`` to ``envelope``."""
    return [*envelope, *encode(message)]
