"""The revocation store: what a CRL must be to be used, and that a bad one never replaces a good one."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509

from gateway.errors import TrustError
from gateway.rig import crlgen
from gateway.trust.revocation import RevocationStore
from tests.certs import NOW, Pki, issuing_distribution_point, key_usage, unknown_extension

AT = NOW.timestamp()


@pytest.fixture(scope="module")
def pki():
    root = Pki.root("Root")
    return root, root.issue_ca("Issuing")


def signers(pki):
    root, ca = pki
    return [root.cert, ca.cert]


def test_installed_crl_answers_lookups_by_integer_value(pki, tmp_path: Path):
    root, ca = pki
    store = RevocationStore(tmp_path)
    idx = store.ingest(ca.crl(revoked=[5, 0x80, 2**159 - 1, 2**64]).der, signers(pki), now=AT)
    assert all(idx.contains(s) for s in (5, 0x80, 2**159 - 1, 2**64))
    assert not any(idx.contains(s) for s in (0, 4, 6, 0x7F, 2**64 + 1, 2**200, -5))
    assert idx.count == 4 and idx.issuer == ca.subject.public_bytes()


def test_negative_serials_are_matched_by_value(pki):
    _, ca = pki
    entries = [crlgen.encode_entry(s, NOW) for s in (-1, -300, 7)]
    number = crlgen.encode_extension(crlgen._OID_CRL_NUMBER, crlgen.encode_integer(1))
    der = crlgen.encode_crl(ca.cert, ca.key, entries, this_update=NOW - dt.timedelta(minutes=1),
                            next_update=NOW + dt.timedelta(days=1), extensions=[number])
    idx = RevocationStore().ingest(der, signers(pki), now=AT)
    assert idx.contains(-1) and idx.contains(-300) and idx.contains(7)
    assert not idx.contains(1) and not idx.contains(300)


def test_restart_reads_the_index_without_the_crl(pki, tmp_path: Path):
    _, ca = pki
    RevocationStore(tmp_path).ingest(ca.crl(revoked=[42]).der, signers(pki), now=AT)
    again = RevocationStore(tmp_path)
    (idx,) = again.all()
    assert idx.contains(42) and not idx.contains(43)
    assert idx.path is not None and oct(os.stat(idx.path).st_mode & 0o777) == "0o640"


def test_a_corrupt_index_file_is_ignored_with_a_log(pki, tmp_path: Path, caplog):
    (tmp_path / "junk.idx").write_bytes(b"PVCRLIX1\x00\x00\x00\x05{}")
    with caplog.at_level(logging.ERROR):
        store = RevocationStore(tmp_path)
    assert store.all() == [] and "unusable" in caplog.text


@pytest.mark.parametrize(("make", "match"), [
    (lambda root, ca: Pki.root("Issuing").crl(), "does not verify"),  # same name, wrong key
    (lambda root, ca: Pki.root("Stranger").crl(), "no trusted certificate"),
    (lambda root, ca: ca.crl(this_update=NOW + dt.timedelta(hours=1)), "in the future"),
    (lambda root, ca: ca.crl(extensions=[(unknown_extension(), True)]),
     "unknown critical CRL extension"),
    (lambda root, ca: ca.crl(delta_of=1), "delta CRLs"),
    (lambda root, ca: ca.crl(idp=issuing_distribution_point(indirect=True)), "indirect"),
    (lambda root, ca: ca.crl(idp=issuing_distribution_point(
        reasons=frozenset({__import__("cryptography.x509").x509.ReasonFlags.key_compromise}))),
     "reason-partitioned"),
])
def test_unusable_crls_are_refused_and_the_good_one_stays(pki, make, match):
    root, ca = pki
    store = RevocationStore()
    good = store.ingest(ca.crl(revoked=[9], number=1).der, signers(pki), now=AT)
    with pytest.raises(TrustError, match=match):
        store.ingest(make(root, ca).der, signers(pki), now=AT)
    assert store.for_issuer(ca.subject.public_bytes()) == [good] and good.contains(9)


def test_unknown_critical_entry_extension_makes_the_crl_unusable(pki):
    _, ca = pki
    from tests.certs import Revoked

    crl = ca.crl(revoked=[Revoked(3, extensions=[(unknown_extension(), True)])])
    with pytest.raises(TrustError, match="unknown critical CRL entry extension"):
        RevocationStore().ingest(crl.der, signers(pki), now=AT)


def test_an_older_crl_never_replaces_a_newer_one(pki):
    _, ca = pki
    store = RevocationStore()
    store.ingest(ca.crl(revoked=[1, 2], number=5).der, signers(pki), now=AT)
    with pytest.raises(TrustError, match="not newer"):
        store.ingest(ca.crl(revoked=[1], number=4).der, signers(pki), now=AT)
    newer = store.ingest(ca.crl(revoked=[1], number=6).der, signers(pki), now=AT)
    assert store.for_issuer(ca.subject.public_bytes()) == [newer] and not newer.contains(2)


def test_a_crl_without_a_crl_number_or_with_a_critical_one_is_refused(pki):
    _, ca = pki
    store = RevocationStore()
    with pytest.raises(TrustError, match="no CRLNumber"):
        store.ingest(ca.crl(number=None).der, signers(pki), now=AT)
    critical = ca.crl(number=None, extensions=[(x509.CRLNumber(3), True)])
    with pytest.raises(TrustError, match="CRLNumber marked critical"):
        store.ingest(critical.der, signers(pki), now=AT)


def test_reingesting_the_crl_in_use_is_a_no_op(pki):
    _, ca = pki
    store = RevocationStore()
    der = ca.crl(number=3).der
    first = store.ingest(der, signers(pki), now=AT)
    gen = store.generation
    assert store.ingest(der, signers(pki), now=AT) is first and store.generation == gen


def test_a_separate_crl_signing_certificate_of_the_ca_is_accepted(pki):
    root, ca = pki
    signer = ca.issue_crl_signer()  # same name as the CA, its own key, cRLSign only
    crl = ca.crl(revoked=[77], signer=signer)
    idx = RevocationStore().ingest(crl.der, [*signers(pki), signer.cert], now=AT)
    assert idx.contains(77)


def test_a_certificate_without_crl_sign_may_not_sign_crls(pki):
    root, ca = pki
    signer = ca.issue_crl_signer(key_usage=key_usage("digital_signature"))
    with pytest.raises(TrustError, match="may sign CRLs"):
        RevocationStore().ingest(ca.crl(signer=signer).der, [signer.cert], now=AT)


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", os.urandom(4096),
                                  b"-----BEGIN X509 CRL-----\nnope\n"])
def test_junk_is_refused_with_a_reason(pki, junk):
    with pytest.raises(TrustError, match="CRL"):
        RevocationStore().ingest(junk, signers(pki), now=AT)


def test_500_mb_of_junk_is_refused_quickly(pki):
    junk = b"\x30\x84\x1d\xcd\x65\x00" + bytes(500 * 1024 * 1024 - 6)
    with pytest.raises(TrustError, match="malformed CRL"):
        RevocationStore().ingest(junk, signers(pki), now=AT)


def test_lookups_during_an_ingest_answer_from_the_old_index(pki):
    _, ca = pki
    store = RevocationStore()
    store.ingest(ca.crl(revoked=[1], number=1).der, signers(pki), now=AT)
    # thisUpdate from NOW, not the wall clock: the store is asked at AT (= NOW), and by the time this
    # test runs in a long suite the wall clock is minutes past it.
    big, _ = crlgen.crl_bytes(ca.cert, ca.key, 100_000, seed=1, crl_number=2, include=[2],
                              this_update=NOW - dt.timedelta(minutes=1))
    issuer = ca.subject.public_bytes()
    seen: list[tuple[bool, bool]] = []
    done = threading.Event()
    failed: list[BaseException] = []

    def ingest() -> None:
        try:
            store.ingest(big, signers(pki), now=AT)
        except BaseException as e:  # reported by the test below, not lost in the thread
            failed.append(e)
        finally:
            done.set()

    t = threading.Thread(target=ingest)
    t.start()
    while not done.is_set():
        (idx,) = store.for_issuer(issuer)
        seen.append((idx.contains(1), idx.contains(2)))
    t.join()
    assert not failed, f"the ingest failed: {failed[0]!r}"
    # Every answer came from one whole index: the old (1 revoked) or the new (2 revoked).
    assert set(seen) <= {(True, False), (False, True)}
    (idx,) = store.for_issuer(issuer)
    assert idx.contains(2) and idx.count == 100_001
