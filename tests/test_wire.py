"""The codec: round trips, auth tags, and bad bytes that must only ever raise WireError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import AuthError, DecodeError, WireError
from daemon.wire import TAG_SIZE, Codec, MessageType

PING = {"s": 7, "t": "n2", "f": "n1", "a": "127.0.0.1:7400",
        "u": [{"k": 0, "n": "n3", "i": 2, "a": "127.0.0.1:7402", "m": {"p": 256}}]}


@pytest.mark.parametrize("secret", [None, b"s3cret"])
def test_round_trip(secret):
    codec = Codec(secret)
    assert codec.decode(codec.encode(MessageType.PING, dict(PING))) == (MessageType.PING, PING)


def test_tagged_packet_is_longer_by_flag_and_tag():
    plain = Codec().encode(MessageType.PING, dict(PING))
    tagged = Codec(b"k").encode(MessageType.PING, dict(PING))
    assert len(tagged) == len(plain) + TAG_SIZE


@pytest.mark.parametrize("sender, receiver, message", [
    (b"one", b"two", "wrong tag"),
    (None, b"two", "untagged packet"),
    (b"one", None, "no cluster secret"),
])
def test_auth_mismatch_is_an_auth_error(sender, receiver, message):
    data = Codec(sender).encode(MessageType.ACK, {"s": 1, "f": "n1"})
    with pytest.raises(AuthError, match=message):
        Codec(receiver).decode(data)


def test_flipped_bit_in_payload_fails_the_tag():
    codec = Codec(b"k")
    data = bytearray(codec.encode(MessageType.ACK, {"s": 1, "f": "n1"}))
    data[-1] ^= 1
    with pytest.raises(AuthError):
        codec.decode(bytes(data))


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\x07abc", "unknown packet flag"),
    (b"\x00\xc1", "not msgpack"),
    (b"\x00" + msgpack.packb([1]), r"not \[type, body\]"),
    (b"\x00" + msgpack.packb([99, {}]), "unknown message type 99"),
    (b"\x00" + msgpack.packb([3, {"s": 1}]), "missing field 'f'"),
    (b"\x00" + msgpack.packb([3, {"s": "1", "f": "n"}]), "'s' is not an integer"),
    (b"\x00" + msgpack.packb([3, {"s": True, "f": "n"}]), "'s' is not an integer"),
    (b"\x00" + msgpack.packb([5, {"f": "n", "u": [1]}]), "GOSSIP.u holds a int"),
    (b"\x00" + msgpack.packb([5, {"f": "n", "u": [{"k": 0}]}]), "missing field 'n'"),
    (b"\x00" + msgpack.packb([3, {1: 2}]), "not msgpack"),  # non-str map key
])
def test_bad_packets_raise_decode_error_with_reason(data, message):
    with pytest.raises(DecodeError, match=message):
        Codec().decode(data)


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from([None, b"k"]))
def test_random_bytes_only_ever_raise_wire_error(data, secret):
    """Random bytes are refused with a WireError (nothing else escapes); the rare blob
    that is a valid message decodes to one that encodes back to the same meaning."""
    _rejected_or_round_trips(Codec(secret), data)


def _rejected_or_round_trips(codec: Codec, data: bytes) -> None:
    try:
        kind, body = codec.decode(data)
    except WireError:
        return
    assert isinstance(kind, MessageType) and isinstance(body, dict)
    assert codec.decode(codec.encode(kind, body)) == (kind, body)


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_random_bytes_after_a_valid_header_only_raise_wire_error(tail):
    _rejected_or_round_trips(Codec(), b"\x00\x92\x05" + tail)


def test_random_bytes_under_a_secret_are_rejected_for_their_tag() -> None:
    with pytest.raises(WireError, match="tag"):
        Codec(b"k").decode(b"\x01" + bytes(range(40)))


def test_message_type_values_are_frozen():
    """Part of the wire protocol: append only, never renumber."""
    assert {t.name: t.value for t in MessageType} == {
        "PING": 1, "PING_REQ": 2, "ACK": 3, "NACK": 4, "GOSSIP": 5, "PUSH_PULL": 6,
        "PUSH_PULL_REPLY": 7, "API_REQUEST": 8, "API_REPLY": 9, "ERROR": 10, "FLOW_UPDATE": 11,
        "DATA": 12, "REPLICATE": 13}


def test_secret_length_is_checked():
    with pytest.raises(ValueError):
        Codec(b"x" * 65)
