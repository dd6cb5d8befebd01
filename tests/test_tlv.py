import pytest
from hypothesis import given
from hypothesis import strategies as st

from readers.tlv import TlvError, iter_tlv, parse_tlv, tlv, unwrap


def test_multi_byte_tag_and_long_length_round_trip():
    value = bytes(300)
    encoded = tlv(0x5FC101, value)
    assert encoded[:5] == bytes.fromhex("5FC1018201")
    assert list(iter_tlv(encoded)) == [(0x5FC101, value)]


def test_length_beyond_input_is_refused():
    with pytest.raises(TlvError, match="claims 16777215 bytes"):
        list(iter_tlv(bytes.fromhex("5383FFFFFF00")))


def test_indefinite_length_is_refused():
    with pytest.raises(TlvError, match="indefinite"):
        list(iter_tlv(bytes.fromhex("538000")))


def test_four_length_bytes_are_refused():
    with pytest.raises(TlvError, match="length field of 4 bytes"):
        list(iter_tlv(bytes.fromhex("538401000000")))


def test_overlong_tag_is_refused():
    with pytest.raises(TlvError, match="tag longer"):
        list(iter_tlv(bytes.fromhex("5FFFFFFF0100")))


def test_duplicate_tag_is_refused():
    with pytest.raises(TlvError, match="twice"):
        parse_tlv(tlv(0x70, b"a") + tlv(0x70, b"b"))


def test_unwrap_names_what_it_found():
    with pytest.raises(TlvError, match="expected one TLV 53, found 70"):
        unwrap(tlv(0x70, b"x"), 0x53)


@given(st.binary(max_size=600))
def test_any_input_parses_or_raises_tlv_error(data: bytes):
    try:
        items = list(iter_tlv(data))
    except TlvError:
        return
    assert sum(len(v) for _, v in items) <= len(data)


@given(st.lists(st.tuples(st.sampled_from([0x4F, 0x53, 0x70, 0x7C, 0x5FC101, 0x9F7F]),
                          st.binary(max_size=400)), max_size=5))
def test_encode_then_parse_gives_the_same_objects(objs):
    data = b"".join(tlv(t, v) for t, v in objs)
    assert list(iter_tlv(data)) == objs
