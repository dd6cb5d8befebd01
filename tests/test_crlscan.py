"""The hand-written CRL walk gives the cryptography library's answers (property-based)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import TrustError
from gateway.rig import crlgen
from gateway.trust.crlscan import scan_crl

KEY = ec.generate_private_key(ec.SECP256R1())
CA, _ = crlgen.make_ca(key=KEY)
THIS = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KNOWN_ENTRY_EXTENSIONS = {"2.5.29.21", "2.5.29.24"}

serials = st.one_of(
    st.integers(min_value=1, max_value=2**64),
    st.integers(min_value=0, max_value=2**159 - 1),
    st.integers(min_value=-(2**63), max_value=-1),  # non-conformant, but seen in the wild
    st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x100, 0x8000, 2**127, 2**159]),
)
entry_extensions = st.lists(st.one_of(
    st.builds(lambda r: ("2.5.29.21", False, b"\x0a\x01" + bytes([r])),
              st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 9, 10])),  # 7 is not a CRLReason
    st.just(("2.5.29.24", False, b"\x18\x0f20250101000000Z")),
    st.tuples(st.sampled_from(["1.2.3.4", "1.3.6.1.4.1.99.1"]), st.booleans(), st.just(b"\x05\x00")),
), max_size=2, unique_by=lambda e: e[0])


def build(entries: list[tuple[int, list[tuple[str, bool, bytes]]]]) -> bytes:
    raw = [crlgen.encode_entry(s, THIS, [crlgen.encode_extension(o, v, critical=c)
                                         for o, c, v in exts]) for s, exts in entries]
    return crlgen.encode_crl(CA, KEY, raw, this_update=THIS, next_update=THIS + dt.timedelta(7))


def library_answer(der: bytes) -> tuple[list[int], bool]:
    crl = x509.load_der_x509_crl(der)
    found, problem = [], False
    for r in crl:
        found.append(r.serial_number)
        for ext in r.extensions:
            if ext.critical and ext.oid.dotted_string not in KNOWN_ENTRY_EXTENSIONS:
                problem = True
    return sorted(found), problem


def our_answer(der: bytes) -> tuple[list[int], bool]:
    scan = scan_crl(der)
    return sorted(scan.serials()), scan.entry_problem is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(serials, entry_extensions), max_size=12,
                unique_by=lambda e: e[0]))
def test_walk_agrees_with_the_library(entries):
    der = build(entries)
    assert our_answer(der) == library_answer(der)
    assert scan_crl(der).skeleton.issuer == CA.subject


SMALL = build([(s, []) for s in (1, 2**70, 0x80, 12345)])  # ECDSA signatures vary: build once
_FIRST, _LAST = crlgen.encode_entry(1, THIS), crlgen.encode_entry(12345, THIS)
# From the revokedCertificates SEQUENCE header (2 bytes: the list is short) to its last byte.
REVOKED = (SMALL.index(_FIRST) - 2, SMALL.index(_LAST) + len(_LAST) - 1)


_DATE = crlgen.encode_time(THIS)
DATE_DIGITS = {i for i in range(len(SMALL) - len(_DATE))
               if SMALL[i : i + len(_DATE)] == _DATE and REVOKED[0] < i < REVOKED[1]
               for i in range(i + 2, i + len(_DATE) - 1)}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_corrupted_revoked_list_is_never_read_differently(data):
    """Inside the revoked list the walk and the library agree: both refuse, or both read the
    same serials. (Outside it the walk is stricter than the library: it refuses, e.g., a
    CertificateList whose outer tag is not SEQUENCE, which the library tolerates.)"""
    der = bytearray(SMALL)
    lo, hi = REVOKED
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        at = data.draw(st.integers(lo, hi), label="at")
        der[at] = data.draw(st.integers(0, 255), label="value")
    try:
        lib = library_answer(bytes(der))
    except ValueError:
        lib = None
    try:
        ours = our_answer(bytes(der))
    except TrustError:
        ours = None
    if ours != lib:
        # Only allowed where the walk does not look on purpose: a revocationDate's digits.
        # With those put back, both must read the same again.
        assert lib is None and any(der[i] != SMALL[i] for i in DATE_DIGITS), (ours, lib)
        for i in DATE_DIGITS:
            der[i] = SMALL[i]
        try:
            lib = library_answer(bytes(der))
        except ValueError:
            lib = None
        assert ours == lib


@given(st.binary(max_size=2000))
def test_garbage_gives_a_reasoned_refusal(junk):
    with pytest.raises(TrustError):
        scan_crl(junk)


def test_non_minimal_serial_integer_is_refused_like_the_library():
    entry = bytes.fromhex("3012" "0203000001" "170d3235303130313030303030305a")
    der = crlgen.encode_crl(CA, KEY, [entry], this_update=THIS, next_update=None)
    with pytest.raises(ValueError):
        library_answer(der)
    with pytest.raises(TrustError, match="non-minimal serial"):
        scan_crl(der)


def test_a_large_generated_crl_matches_the_library():
    der, expected = crlgen.crl_bytes(CA, KEY, 5000, seed=3)
    ours, problem = our_answer(der)
    assert not problem and ours == sorted(expected) == library_answer(der)[0]


def test_indirect_crl_entry_is_flagged():
    issuer_ext = crlgen.encode_extension("2.5.29.29", bytes.fromhex("3000"), critical=True)
    der = crlgen.encode_crl(
        CA, KEY, [crlgen.encode_entry(5, THIS, [issuer_ext])], this_update=THIS, next_update=None)
    assert "indirect" in (scan_crl(der).entry_problem or "")


def test_fast_and_careful_paths_read_the_same_serials():
    """The regex fast path (common shapes) and the careful walk give the same keys."""
    from gateway.trust import crlscan

    der, _ = crlgen.crl_bytes(CA, KEY, 3000, seed=5, serial_bytes=9)
    fast = scan_crl(der)
    original = crlscan._fast_keys
    crlscan._fast_keys = lambda *a: None
    try:
        careful = scan_crl(der)
    finally:
        crlscan._fast_keys = original
    assert fast.width == careful.width and fast.keys == careful.keys


def test_an_odd_entry_in_the_middle_is_not_skipped():
    """findall skips what it cannot match; an entry of an unusual shape (here an
    invalidityDate) among common ones must still be read, by the careful walk."""
    odd = crlgen.encode_entry(424242, THIS, [crlgen.encode_extension(
        "2.5.29.24", crlgen.tlv(0x18, b"20250101000000Z"))])
    common = [crlgen.encode_entry(s, THIS) for s in range(1, 2000)]
    der = crlgen.encode_crl(CA, KEY, [*common[:1000], odd, *common[1000:]], this_update=THIS,
                            next_update=None)
    assert 424242 in scan_crl(der).serials() and len(scan_crl(der).serials()) == 2000
