import pytest

from broker import protocol
from broker.errors import ProtocolError

EVERY_MESSAGE = [
    protocol.ClientRequest("default", "r1", 1500, True, b'{"text": "hi"}'),
    protocol.ClientRequest("default", "r2", 0, False, b"{}"),
    protocol.ClientCancel("r1"),
    protocol.ClientHeartbeat(),
    protocol.ClientReply("r1", b"{}"),
    protocol.ClientPartial("r1", b'{"text": "a"}'),
    protocol.ClientFinal("r1", b"{}"),
    protocol.ClientError("r1", "TIMEOUT", "too late \u00e9", "RequestTimeout"),
    protocol.WorkerReady("default", b'{"model": "m"}'),
    protocol.WorkerRequest("r1", 250, False, b"{}"),
    protocol.WorkerReply("r1", b"{}"),
    protocol.WorkerPartial("r1", b"{}"),
    protocol.WorkerFinal("r1", b"{}"),
    protocol.WorkerError("r1", "WORKER_ERROR", "boom", "KeyError"),
    protocol.WorkerHeartbeat(),
    protocol.WorkerDisconnect(),
    protocol.WorkerCancel("r1"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_decodes_to_what_was_encoded(message):
    assert protocol.decode(protocol.encode(message)) == message
    assert protocol.decode(protocol.encode(message, delimiter=False), delimiter=False) == message


def test_envelope_is_split_at_the_first_empty_frame_and_joined_back():
    message = protocol.ClientHeartbeat()
    frames = protocol.join_envelope((b"proxy", b"client"), message)
    envelope, rest = protocol.split_envelope(frames)
    assert envelope == (b"proxy", b"client")
    assert protocol.decode(rest) == message


GARBAGE = [
    [],
    [b"no-delimiter"],
    [b"", protocol.CLIENT],
    [b"", b"MDPC01", protocol.REQUEST],
    [b"", protocol.CLIENT, b"\x7f"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"svc", b"id"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"svc", b"id", b"-5", b"", b"{}"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"svc", b"id", b"10", b"turbo", b"{}"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"", b"id", b"10", b"", b"{}"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"svc", "\u00e9".encode(), b"10", b"", b"{}"],
    [b"", protocol.CLIENT, protocol.REQUEST, b"svc", b"x" * 65, b"10", b"", b"{}"],
    [b"", protocol.CLIENT, protocol.CANCEL, b"id\n"],
    [b"", protocol.WORKER, protocol.ERROR, b"id", b"CODE", b"\xff", b""],
]


@pytest.mark.parametrize("frames", GARBAGE)
def test_malformed_frames_raise_a_protocol_error(frames):
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_a_message_without_envelope_is_rejected():
    with pytest.raises(ProtocolError):
        protocol.split_envelope([b"", protocol.CLIENT, protocol.HEARTBEAT])
