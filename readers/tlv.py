"""Strict, bounded BER-TLV (ISO 7816-4 / X.690 subset used by PIV).

No input can make the parser loop, recurse without bound or allocate more than its input:
tags are at most 3 bytes, lengths at most 3 bytes (16 MB) and must fit in what remains.
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.errors import MalformedCardData

MAX_TAG_BYTES = 3
MAX_LENGTH_BYTES = 3


class TlvError(MalformedCardData):
    """Malformed BER-TLV from a card."""


def _read_tag(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise TlvError("truncated TLV: tag missing")
    first = data[i]
    tag = first
    i += 1
    if first & 0x1F == 0x1F:
        for n in range(MAX_TAG_BYTES - 1):
            if i >= len(data):
                raise TlvError("truncated TLV: multi-byte tag")
            b = data[i]
            tag = (tag << 8) | b
            i += 1
            if not b & 0x80:
                break
            if n == MAX_TAG_BYTES - 2:
                raise TlvError(f"TLV tag longer than {MAX_TAG_BYTES} bytes")
    return tag, i


def _read_length(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise TlvError("truncated TLV: length missing")
    first = data[i]
    i += 1
    if first < 0x80:
        return first, i
    if first == 0x80:
        raise TlvError("indefinite TLV length is not allowed")
    n = first & 0x7F
    if n > MAX_LENGTH_BYTES:
        raise TlvError(f"TLV length field of {n} bytes (at most {MAX_LENGTH_BYTES})")
    if i + n > len(data):
        raise TlvError("truncated TLV: length bytes")
    return int.from_bytes(data[i : i + n], "big"), i + n


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value) for each top-level TLV in `data`; raise TlvError on malformed input.

    Padding bytes 0x00 and 0xFF between objects are skipped (ISO 7816-4 5.2.2.1).
    """
    i = 0
    end = len(data)
    while i < end:
        if data[i] in (0x00, 0xFF):
            i += 1
            continue
        tag, i = _read_tag(data, i)
        length, i = _read_length(data, i)
        if length > end - i:
            raise TlvError(f"TLV tag {tag:X} claims {length} bytes, {end - i} remain")
        yield tag, data[i : i + length]
        i += length


def parse_tlv(data: bytes) -> dict[int, bytes]:
    """Top-level TLVs as a dict; a repeated tag is an error (ambiguous card data)."""
    out: dict[int, bytes] = {}
    for tag, value in iter_tlv(data):
        if tag in out:
            raise TlvError(f"TLV tag {tag:X} appears twice")
        out[tag] = value
    return out


def unwrap(data: bytes, tag: int) -> bytes:
    """The value of a single TLV `tag` that must make up all of `data`."""
    items = list(iter_tlv(data))
    if len(items) != 1 or items[0][0] != tag:
        found = ", ".join(f"{t:X}" for t, _ in items) or "nothing"
        raise TlvError(f"expected one TLV {tag:X}, found {found}")
    return items[0][1]


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > MAX_LENGTH_BYTES:
        raise ValueError(f"TLV value too long: {n} bytes")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    """Encode one TLV (tag given as its integer value, e.g. 0x5FC101)."""
    tag_bytes = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    return tag_bytes + encode_length(len(value)) + value
