import dataclasses

import pytest

from broker import protocol
from broker.errors import ProtocolError, UnsupportedVersion

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
    protocol.WorkerDisconnect("protocol version 3 is not supported"),
    protocol.WorkerCancel("r1"),
    protocol.ClientRequest("default", "r1", 10, False, b"{}", version=1),
    protocol.ClientHeartbeat(None, version=1),
    protocol.WorkerReady("default", b"{}", 4, version=1),
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


# Frames exactly as every peer released before versions were counted sends them.
PREVIOUS_VERSION_FRAMES = [
    [b"", b"LLMC01", protocol.REQUEST, b"default", b"r1", b"1000", b"stream", b'{"text": "hi"}'],
    [b"", b"LLMC01", protocol.HEARTBEAT],
    [b"", b"LLMC01", protocol.HEARTBEAT, b""],
    [b"", b"LLMC01", protocol.CANCEL, b"r1"],
    [b"", b"LLMW01", protocol.READY, b"default", b"{}", b"8"],
    [b"", b"LLMW01", protocol.REPLY, b"r1", b"{}"],
    [b"", b"LLMW01", protocol.DISCONNECT],
]


@pytest.mark.parametrize("frames", PREVIOUS_VERSION_FRAMES, ids=lambda f: f"{f[1].decode()}-{f[2].hex()}-{len(f)}")
def test_a_message_of_the_first_version_is_read_in_that_version_and_written_back_the_same(frames):
    message = protocol.decode(frames)
    assert message.version == protocol.FIRST_VERSION == 1
    assert protocol.encode(message) == frames


# Frames as version 2 peers send them: requests to workers have no tenant or tokens to go on from.
VERSION_2_FRAMES = [
    [b"", b"LLMW02", protocol.REQUEST, b"r1", b"1000", b"stream", b'{"text": "hi"}'],
    [b"", b"LLMW02", protocol.BATCH, b"r1", b"1000", b"", b"{}", b"r2", b"900", b"stream", b"{}"],
    [b"", b"LLMW02", protocol.PARTIAL, b"r1", b'{"text": "a"}'],
]


@pytest.mark.parametrize("frames", VERSION_2_FRAMES, ids=lambda f: f"{f[1].decode()}-{f[2].hex()}-{len(f)}")
def test_a_message_of_version_2_is_read_in_that_version_and_written_back_the_same(frames):
    message = protocol.decode(frames)
    assert message.version == 2
    assert protocol.encode(message) == frames


def test_a_request_of_version_3_names_its_tenant_and_the_tokens_to_go_on_from():
    request = protocol.WorkerRequest("r1", 5000, True, b"{}", tenant="key-7", resume=(1, 300, 70000), version=3)
    frames = protocol.encode(request)
    assert frames[1] == b"LLMW03" and frames[-2:] == [b"key-7", protocol.pack_tokens((1, 300, 70000))]
    assert len(frames[-1]) == 12 and protocol.decode(frames) == request
    fresh = protocol.WorkerRequest("r2", 5000, False, b"{}", version=3)
    assert protocol.encode(fresh)[-2:] == [b"", b""] and protocol.decode(protocol.encode(fresh)) == fresh


def test_a_piece_of_version_3_may_name_its_tokens_and_a_capacity_message_exists_only_from_version_3():
    piece = protocol.WorkerPartial("r1", b'{"text": "a"}', (5, 6), version=3)
    assert protocol.decode(protocol.encode(piece)) == piece
    assert len(protocol.encode(protocol.WorkerPartial("r1", b"{}", version=3))) == 5  # no tokens, no frame
    assert protocol.decode(protocol.encode(protocol.WorkerCapacity(0))) == protocol.WorkerCapacity(0)
    with pytest.raises(ProtocolError):
        protocol.decode([b"", b"LLMW02", protocol.CAPACITY, b"3"])
    with pytest.raises(ProtocolError):
        protocol.decode([b"", b"LLMW03", protocol.PARTIAL, b"r1", b"{}", b"abc"])  # not whole 32-bit ids


def test_a_ready_of_the_first_revision_without_capacity_means_one_request_at_a_time():
    ready = protocol.decode([b"", b"LLMW01", protocol.READY, b"default", b"{}"])
    assert (ready.version, ready.capacity) == (1, 1)


def test_the_current_version_is_the_next_one_and_is_what_messages_are_written_in():
    assert protocol.SUPPORTED_VERSIONS == (1, 2, 3, 4)
    assert protocol.encode(protocol.ClientHeartbeat())[1] == b"LLMC04"
    assert protocol.encode(protocol.WorkerHeartbeat())[1] == b"LLMW04"
    assert protocol.encode(protocol.WorkerHeartbeat(version=1))[1] == b"LLMW01"


@pytest.mark.parametrize(
    "frames",
    [
        [b"", b"LLMW02", protocol.READY, b"default", b"{}"],
        [b"", b"LLMC02", protocol.HEARTBEAT],
        [b"", b"LLMW01", protocol.DISCONNECT, b"a reason"],
    ],
)
def test_forms_that_belong_to_another_version_are_malformed(frames):
    with pytest.raises(ProtocolError) as raised:
        protocol.decode(frames)
    assert not isinstance(raised.value, UnsupportedVersion)


def test_a_disconnect_reason_is_left_out_for_a_peer_of_the_previous_version():
    assert protocol.encode(protocol.WorkerDisconnect("refused", version=1)) == [b"", b"LLMW01", protocol.DISCONNECT]


@pytest.mark.parametrize(
    "header, side, version", [(b"LLMC05", "LLMC", 5), (b"LLMW99", "LLMW", 99), (b"LLMC00", "LLMC", 0)]
)
def test_a_header_of_a_version_not_spoken_is_refused_naming_both_versions(header, side, version):
    with pytest.raises(UnsupportedVersion) as raised:
        protocol.decode([b"", header, protocol.REQUEST, b"whatever", b"shape"])
    assert (raised.value.side, raised.value.version) == (side, version)
    assert f"protocol version {version} is not supported" in str(raised.value)
    assert "speaks versions 1, 2, 3 and 4" in str(raised.value)


def test_a_refusal_can_be_written_in_the_refused_peers_own_version():
    frames = protocol.encode(protocol.ClientError("-", "UNSUPPORTED_VERSION", "no", version=5))
    assert frames[:2] == [b"", b"LLMC05"] and frames[2][:1] == protocol.ERROR
    assert protocol.encode(protocol.WorkerDisconnect("no", version=5)) == [b"", b"LLMW05", protocol.DISCONNECT, b"no"]


ONE_OF_EACH = [
    *(message for message in EVERY_MESSAGE if message.version == protocol.VERSION),
    protocol.WorkerBatch((protocol.WorkerRequest("r1", 250, False, b"{}"),)),
    protocol.WorkerCapacity(3),
]


def test_one_of_each_covers_every_message_class():
    assert {type(message) for message in ONE_OF_EACH} == set(protocol.MESSAGE_CLASSES)


@pytest.mark.parametrize(
    "message, version",
    [(m, v) for m in ONE_OF_EACH for v in protocol.SUPPORTED_VERSIONS],
    ids=lambda value: type(value).__name__ if isinstance(value, protocol.Message) else f"v{value}",
)
def test_a_message_is_read_only_under_the_header_of_a_version_that_carries_it(message, version):
    frames = protocol.encode(dataclasses.replace(message, version=version))
    if version >= type(message).since:
        assert type(protocol.decode(frames)) is type(message)
        assert protocol.decode(frames).version == version
    else:
        with pytest.raises(ProtocolError, match=f"carried from protocol version {type(message).since} on") as refused:
            protocol.decode(frames)
        assert not isinstance(refused.value, UnsupportedVersion)


def test_a_message_newer_than_a_version_is_refused_under_its_header_and_read_under_its_own():
    assert protocol.WorkerCapacity.since == protocol.SLOTS_VERSION == 3
    with pytest.raises(ProtocolError, match="WorkerCapacity is carried from protocol version 3 on, not in version 2"):
        protocol.decode([b"", b"LLMW02", protocol.CAPACITY, b"3"])
    assert protocol.decode([b"", b"LLMW03", protocol.CAPACITY, b"3"]) == protocol.WorkerCapacity(3, version=3)


def test_from_version_4_a_message_travels_as_its_header_its_packed_command_and_fields_and_its_body():
    share = protocol.Share("key-7", 2, 3)
    request = protocol.ClientRequest("default", "r1", 5000, True, b'{"text": "hi"}', share)
    frames = protocol.encode(request)
    assert frames == [
        b"",
        b"LLMC04",
        protocol.REQUEST + protocol.pack_fields([b"default", b"r1", b"5000", b"stream", share.frame()]),
        b'{"text": "hi"}',
    ]
    assert protocol.decode(frames) == request
    work = protocol.WorkerRequest("r1", 250, False, b'{"text": "hi"}', tenant="key-7", resume=(5, 6))
    assert protocol.encode(work)[-1] == b'{"text": "hi"}' and protocol.decode(protocol.encode(work)) == work
    error = protocol.encode(protocol.ClientError("r1", "TIMEOUT", "too late"))  # no body: its last field apart
    assert error == [b"", b"LLMC04", protocol.ERROR + protocol.pack_fields([b"r1", b"TIMEOUT", b"too late"]), b""]
    reply = protocol.encode(protocol.ClientReply("r1", b'{"output": "x"}'))
    assert reply == [b"", b"LLMC04", protocol.REPLY + protocol.pack_fields([b"r1"]), b'{"output": "x"}']
    assert protocol.encode(protocol.WorkerCancel("r1")) == [b"", b"LLMW04", protocol.CANCEL, b"r1"]  # one field: as before
    assert len(protocol.encode(dataclasses.replace(request, version=3))) == 9  # each field a frame before


@pytest.mark.parametrize(
    "packed",
    [b"\x05\x00\x00", b"\x05\x00\x00\x00abc", b"\x02\x00\x00\x00ab\x01"],
    ids=["length-cut-short", "field-past-frame", "trailing-length"],
)
def test_a_packed_frame_that_its_fields_do_not_fill_exactly_is_malformed(packed):
    with pytest.raises(ProtocolError, match="packed field"):
        protocol.decode([b"", b"LLMC04", protocol.REQUEST + packed, b"{}"])


def test_a_malformed_request_of_version_4_still_names_its_request_id_to_be_answered():
    frames = [b"", b"LLMC04", protocol.REQUEST + protocol.pack_fields([b"default", b"r9", b"soon", b""]), b"{}"]
    with pytest.raises(ProtocolError):
        protocol.decode(frames)
    assert protocol.salvage_request_id(frames) == "r9"
