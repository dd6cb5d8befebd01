"""NIST PKITS (the Public Key Interoperability Test Suite, 2011 edition) as the project's tests
see it: every case of sections 4.1-4.16, its inputs and NIST's expected verdict.

The data comes from the `cryptography-vectors` package (x509/PKITS_data). Each case's inputs are
the certificates and CRLs NIST packed into its S/MIME message (`smime/Signed<Name>.eml`): the
signer's path below the trust anchor and every CRL the path needs. The trust anchor is
`TrustAnchorRootCertificate.crt` for every case.

Expected verdicts come from the test names (`Valid...` accept, `Invalid...` reject). The cases
whose names carry neither (section 4.8 and 4.12.3: their verdict depends on the user-initial
settings) are listed with the verdict NIST gives for the default settings, which are the ones
Portvakt validates with: initial-policy-set = {anyPolicy}, initial-explicit-policy = false,
initial-policy-mapping-inhibit = false, initial-any-policy-inhibit = false.

`OUT_OF_SCOPE` names the cases Portvakt knowingly answers differently from NIST, each with the
reason; docs/trust.md carries the same table.
"""

from __future__ import annotations

import base64
import email
import functools
from dataclasses import dataclass
from pathlib import Path

# Sections of the suite, in order: (number, title, case names in PKITS order).
SECTIONS: list[tuple[str, str, list[str]]] = [
    ("4.1", "Signature verification", [
        "ValidSignaturesTest1", "InvalidCASignatureTest2", "InvalidEESignatureTest3",
        "ValidDSASignaturesTest4", "ValidDSAParameterInheritanceTest5", "InvalidDSASignatureTest6"]),
    ("4.2", "Validity periods", [
        "InvalidCAnotBeforeDateTest1", "InvalidEEnotBeforeDateTest2",
        "Validpre2000UTCnotBeforeDateTest3", "ValidGeneralizedTimenotBeforeDateTest4",
        "InvalidCAnotAfterDateTest5", "InvalidEEnotAfterDateTest6",
        "Invalidpre2000UTCEEnotAfterDateTest7", "ValidGeneralizedTimenotAfterDateTest8"]),
    ("4.3", "Verifying name chaining", [
        "InvalidNameChainingEETest1", "InvalidNameChainingOrderTest2",
        "ValidNameChainingWhitespaceTest3", "ValidNameChainingWhitespaceTest4",
        "ValidNameChainingCapitalizationTest5", "ValidNameChainingUIDsTest6",
        "ValidRFC3280MandatoryAttributeTypesTest7", "ValidRFC3280OptionalAttributeTypesTest8",
        "ValidUTF8StringEncodedNamesTest9", "ValidRolloverfromPrintableStringtoUTF8StringTest10",
        "ValidUTF8StringCaseInsensitiveMatchTest11"]),
    ("4.4", "Basic certificate revocation", [
        "MissingCRLTest1", "InvalidRevokedCATest2", "InvalidRevokedEETest3",
        "InvalidBadCRLSignatureTest4", "InvalidBadCRLIssuerNameTest5", "InvalidWrongCRLTest6",
        "ValidTwoCRLsTest7", "InvalidUnknownCRLEntryExtensionTest8",
        "InvalidUnknownCRLExtensionTest9", "InvalidUnknownCRLExtensionTest10",
        "InvalidOldCRLnextUpdateTest11", "Invalidpre2000CRLnextUpdateTest12",
        "ValidGeneralizedTimeCRLnextUpdateTest13", "ValidNegativeSerialNumberTest14",
        "InvalidNegativeSerialNumberTest15", "ValidLongSerialNumberTest16",
        "ValidLongSerialNumberTest17", "InvalidLongSerialNumberTest18",
        "ValidSeparateCertificateandCRLKeysTest19", "InvalidSeparateCertificateandCRLKeysTest20",
        "InvalidSeparateCertificateandCRLKeysTest21"]),
    ("4.5", "Paths with self-issued certificates", [
        "ValidBasicSelfIssuedOldWithNewTest1", "InvalidBasicSelfIssuedOldWithNewTest2",
        "ValidBasicSelfIssuedNewWithOldTest3", "ValidBasicSelfIssuedNewWithOldTest4",
        "InvalidBasicSelfIssuedNewWithOldTest5", "ValidBasicSelfIssuedCRLSigningKeyTest6",
        "InvalidBasicSelfIssuedCRLSigningKeyTest7", "InvalidBasicSelfIssuedCRLSigningKeyTest8"]),
    ("4.6", "Basic constraints", [
        "InvalidMissingbasicConstraintsTest1", "InvalidcAFalseTest2", "InvalidcAFalseTest3",
        "ValidbasicConstraintsNotCriticalTest4", "InvalidpathLenConstraintTest5",
        "InvalidpathLenConstraintTest6", "ValidpathLenConstraintTest7",
        "ValidpathLenConstraintTest8", "InvalidpathLenConstraintTest9",
        "InvalidpathLenConstraintTest10", "InvalidpathLenConstraintTest11",
        "InvalidpathLenConstraintTest12", "ValidpathLenConstraintTest13",
        "ValidpathLenConstraintTest14", "ValidSelfIssuedpathLenConstraintTest15",
        "InvalidSelfIssuedpathLenConstraintTest16", "ValidSelfIssuedpathLenConstraintTest17"]),
    ("4.7", "Key usage", [
        "InvalidkeyUsageCriticalkeyCertSignFalseTest1",
        "InvalidkeyUsageNotCriticalkeyCertSignFalseTest2", "ValidkeyUsageNotCriticalTest3",
        "InvalidkeyUsageCriticalcRLSignFalseTest4", "InvalidkeyUsageNotCriticalcRLSignFalseTest5"]),
    ("4.8", "Certificate policies", [
        "AllCertificatesSamePolicyTest1", "AllCertificatesNoPoliciesTest2",
        "DifferentPoliciesTest3", "DifferentPoliciesTest4", "DifferentPoliciesTest5",
        "OverlappingPoliciesTest6", "DifferentPoliciesTest7", "DifferentPoliciesTest8",
        "DifferentPoliciesTest9", "AllCertificatesSamePoliciesTest10",
        "AllCertificatesAnyPolicyTest11", "DifferentPoliciesTest12",
        "AllCertificatesSamePoliciesTest13", "AnyPolicyTest14", "UserNoticeQualifierTest15",
        "UserNoticeQualifierTest16", "UserNoticeQualifierTest17", "UserNoticeQualifierTest18",
        "UserNoticeQualifierTest19", "CPSPointerQualifierTest20"]),
    ("4.9", "Require explicit policy", [
        "ValidRequireExplicitPolicyTest1", "ValidRequireExplicitPolicyTest2",
        "InvalidRequireExplicitPolicyTest3", "ValidRequireExplicitPolicyTest4",
        "InvalidRequireExplicitPolicyTest5", "ValidSelfIssuedrequireExplicitPolicyTest6",
        "InvalidSelfIssuedrequireExplicitPolicyTest7",
        "InvalidSelfIssuedrequireExplicitPolicyTest8"]),
    ("4.10", "Policy mappings", [
        "ValidPolicyMappingTest1", "InvalidPolicyMappingTest2", "ValidPolicyMappingTest3",
        "InvalidPolicyMappingTest4", "ValidPolicyMappingTest5", "ValidPolicyMappingTest6",
        "InvalidMappingFromanyPolicyTest7", "InvalidMappingToanyPolicyTest8",
        "ValidPolicyMappingTest9", "InvalidPolicyMappingTest10", "ValidPolicyMappingTest11",
        "ValidPolicyMappingTest12", "ValidPolicyMappingTest13", "ValidPolicyMappingTest14"]),
    ("4.11", "Inhibit policy mapping", [
        "InvalidinhibitPolicyMappingTest1", "ValidinhibitPolicyMappingTest2",
        "InvalidinhibitPolicyMappingTest3", "ValidinhibitPolicyMappingTest4",
        "InvalidinhibitPolicyMappingTest5", "InvalidinhibitPolicyMappingTest6",
        "ValidSelfIssuedinhibitPolicyMappingTest7", "InvalidSelfIssuedinhibitPolicyMappingTest8",
        "InvalidSelfIssuedinhibitPolicyMappingTest9",
        "InvalidSelfIssuedinhibitPolicyMappingTest10",
        "InvalidSelfIssuedinhibitPolicyMappingTest11"]),
    ("4.12", "Inhibit any policy", [
        "InvalidinhibitAnyPolicyTest1", "ValidinhibitAnyPolicyTest2", "inhibitAnyPolicyTest3",
        "InvalidinhibitAnyPolicyTest4", "InvalidinhibitAnyPolicyTest5",
        "InvalidinhibitAnyPolicyTest6", "ValidSelfIssuedinhibitAnyPolicyTest7",
        "InvalidSelfIssuedinhibitAnyPolicyTest8", "ValidSelfIssuedinhibitAnyPolicyTest9",
        "InvalidSelfIssuedinhibitAnyPolicyTest10"]),
    ("4.13", "Name constraints", [
        "ValidDNnameConstraintsTest1", "InvalidDNnameConstraintsTest2",
        "InvalidDNnameConstraintsTest3", "ValidDNnameConstraintsTest4",
        "ValidDNnameConstraintsTest5", "ValidDNnameConstraintsTest6",
        "InvalidDNnameConstraintsTest7", "InvalidDNnameConstraintsTest8",
        "InvalidDNnameConstraintsTest9", "InvalidDNnameConstraintsTest10",
        "ValidDNnameConstraintsTest11", "InvalidDNnameConstraintsTest12",
        "InvalidDNnameConstraintsTest13", "ValidDNnameConstraintsTest14",
        "InvalidDNnameConstraintsTest15", "InvalidDNnameConstraintsTest16",
        "InvalidDNnameConstraintsTest17", "ValidDNnameConstraintsTest18",
        "ValidSelfIssuedDNnameConstraintsTest19", "InvalidSelfIssuedDNnameConstraintsTest20",
        "ValidRFC822nameConstraintsTest21", "InvalidRFC822nameConstraintsTest22",
        "ValidRFC822nameConstraintsTest23", "InvalidRFC822nameConstraintsTest24",
        "ValidRFC822nameConstraintsTest25", "InvalidRFC822nameConstraintsTest26",
        "ValidDNandRFC822nameConstraintsTest27", "InvalidDNandRFC822nameConstraintsTest28",
        "InvalidDNandRFC822nameConstraintsTest29", "ValidDNSnameConstraintsTest30",
        "InvalidDNSnameConstraintsTest31", "ValidDNSnameConstraintsTest32",
        "InvalidDNSnameConstraintsTest33", "ValidURInameConstraintsTest34",
        "InvalidURInameConstraintsTest35", "ValidURInameConstraintsTest36",
        "InvalidURInameConstraintsTest37", "InvalidDNSnameConstraintsTest38"]),
    ("4.14", "Distribution points", [
        "ValiddistributionPointTest1", "InvaliddistributionPointTest2",
        "InvaliddistributionPointTest3", "ValiddistributionPointTest4",
        "ValiddistributionPointTest5", "InvaliddistributionPointTest6",
        "ValiddistributionPointTest7", "InvaliddistributionPointTest8",
        "InvaliddistributionPointTest9", "ValidNoissuingDistributionPointTest10",
        "InvalidonlyContainsUserCertsCRLTest11", "InvalidonlyContainsCACertsCRLTest12",
        "ValidonlyContainsCACertsCRLTest13", "InvalidonlyContainsAttributeCertsTest14",
        "InvalidonlySomeReasonsTest15", "InvalidonlySomeReasonsTest16",
        "InvalidonlySomeReasonsTest17", "ValidonlySomeReasonsTest18", "ValidonlySomeReasonsTest19",
        "InvalidonlySomeReasonsTest20", "InvalidonlySomeReasonsTest21",
        "ValidIDPwithindirectCRLTest22", "InvalidIDPwithindirectCRLTest23",
        "ValidIDPwithindirectCRLTest24", "ValidIDPwithindirectCRLTest25",
        "InvalidIDPwithindirectCRLTest26", "InvalidcRLIssuerTest27", "ValidcRLIssuerTest28",
        "ValidcRLIssuerTest29", "ValidcRLIssuerTest30", "InvalidcRLIssuerTest31",
        "InvalidcRLIssuerTest32", "ValidcRLIssuerTest33", "InvalidcRLIssuerTest34",
        "InvalidcRLIssuerTest35"]),
    ("4.15", "Delta-CRLs", [
        "InvaliddeltaCRLIndicatorNoBaseTest1", "ValiddeltaCRLTest2", "InvaliddeltaCRLTest3",
        "InvaliddeltaCRLTest4", "ValiddeltaCRLTest5", "InvaliddeltaCRLTest6",
        "ValiddeltaCRLTest7", "ValiddeltaCRLTest8", "InvaliddeltaCRLTest9",
        "InvaliddeltaCRLTest10"]),
    ("4.16", "Private certificate extensions", [
        "ValidUnknownNotCriticalCertificateExtensionTest1",
        "InvalidUnknownCriticalCertificateExtensionTest2"]),
]

# The sections whose every case a conforming RFC 5280 path validator must pass without optional
# features: no certificate-policy processing (4.8-4.12), no name constraints (4.13), no
# distribution points, partitioned or indirect CRLs (4.14), no delta CRLs (4.15).
REQUIRED_SECTIONS = ("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.16")

# NIST's verdict under the default settings for the cases whose names do not say it.
UNNAMED_VERDICTS: dict[str, bool] = {
    "MissingCRLTest1": False,
    "AllCertificatesSamePolicyTest1": True, "AllCertificatesNoPoliciesTest2": True,
    "DifferentPoliciesTest3": True, "DifferentPoliciesTest4": False,
    "DifferentPoliciesTest5": False, "OverlappingPoliciesTest6": True,
    "DifferentPoliciesTest7": False, "DifferentPoliciesTest8": False,
    "DifferentPoliciesTest9": False, "AllCertificatesSamePoliciesTest10": True,
    "AllCertificatesAnyPolicyTest11": True, "DifferentPoliciesTest12": False,
    "AllCertificatesSamePoliciesTest13": True, "AnyPolicyTest14": True,
    "UserNoticeQualifierTest15": True, "UserNoticeQualifierTest16": True,
    "UserNoticeQualifierTest17": True, "UserNoticeQualifierTest18": True,
    "UserNoticeQualifierTest19": True, "CPSPointerQualifierTest20": True,
    "inhibitAnyPolicyTest3": True,
}

# Cases Portvakt knowingly answers differently from NIST, with the reason (docs/trust.md).
_DSA = ("DSA is refused as unsupported-algorithm: FIPS 186-5 no longer approves DSA signatures "
        "and PIV cards and CAs use RSA or ECDSA")
_POLICY = ("certificate policy processing (the valid_policy_tree of RFC 5280 6.1: "
           "requireExplicitPolicy, inhibitAnyPolicy) is not implemented; Portvakt accepts the "
           "path and a door's credential profile checks the policy OIDs of the card certificate")
_MAPPING = ("policy mapping is not implemented: a path with a policyMappings extension is "
            "refused (policy-mapping), failing closed")
_RELATIVE_DP = ("distribution points named relative to the CRL issuer, or matched as directory "
                "names, are not supported: the CRL is set aside and revocation is unknown "
                "(the stance denies)")
_REASONS = ("reason-partitioned CRLs (onlySomeReasons) are not supported: the CRL is set aside "
            "and revocation is unknown (the stance denies)")
_INDIRECT = ("indirect CRLs (indirectCRL, cRLIssuer, certificateIssuer) are not supported: the "
             "CRL is set aside and revocation is unknown (the stance denies)")
_DELTA = ("delta CRLs are not processed: the delta is set aside and the certificate judged on "
          "the complete CRL alone")
OUT_OF_SCOPE: dict[str, str] = {
    "ValidDSASignaturesTest4": _DSA, "ValidDSAParameterInheritanceTest5": _DSA,
    **dict.fromkeys([
        "DifferentPoliciesTest4", "DifferentPoliciesTest5", "DifferentPoliciesTest7",
        "DifferentPoliciesTest8", "DifferentPoliciesTest9", "DifferentPoliciesTest12",
        "InvalidRequireExplicitPolicyTest3", "InvalidRequireExplicitPolicyTest5",
        "InvalidSelfIssuedrequireExplicitPolicyTest7", "InvalidSelfIssuedrequireExplicitPolicyTest8",
        "InvalidinhibitAnyPolicyTest1", "InvalidinhibitAnyPolicyTest4",
        "InvalidinhibitAnyPolicyTest5", "InvalidinhibitAnyPolicyTest6",
        "InvalidSelfIssuedinhibitAnyPolicyTest8", "InvalidSelfIssuedinhibitAnyPolicyTest10"],
        _POLICY),
    **dict.fromkeys([
        "ValidPolicyMappingTest1", "ValidPolicyMappingTest3", "ValidPolicyMappingTest5",
        "ValidPolicyMappingTest6", "ValidPolicyMappingTest9", "ValidPolicyMappingTest11",
        "ValidPolicyMappingTest12", "ValidPolicyMappingTest13", "ValidPolicyMappingTest14",
        "ValidinhibitPolicyMappingTest2", "ValidinhibitPolicyMappingTest4",
        "ValidSelfIssuedinhibitPolicyMappingTest7"], _MAPPING),
    **dict.fromkeys(["ValiddistributionPointTest4", "ValiddistributionPointTest5",
                     "ValiddistributionPointTest7"], _RELATIVE_DP),
    **dict.fromkeys(["ValidonlySomeReasonsTest18", "ValidonlySomeReasonsTest19"], _REASONS),
    **dict.fromkeys(["ValidIDPwithindirectCRLTest22", "ValidIDPwithindirectCRLTest24",
                     "ValidIDPwithindirectCRLTest25", "ValidcRLIssuerTest28",
                     "ValidcRLIssuerTest29", "ValidcRLIssuerTest30", "ValidcRLIssuerTest33"],
                    _INDIRECT),
    **dict.fromkeys(["InvaliddeltaCRLTest4", "ValiddeltaCRLTest5"], _DELTA),
}


@dataclass(frozen=True)
class Case:
    number: str  # "4.3.3"
    name: str  # "ValidNameChainingWhitespaceTest3"
    section: str  # "4.3"
    expected: bool  # NIST: the path validates
    certificates: tuple[bytes, ...]  # DER, from the S/MIME message: the path below the anchor
    crls: tuple[bytes, ...]  # DER

    @property
    def required(self) -> bool:
        return self.section in REQUIRED_SECTIONS

    @property
    def out_of_scope(self) -> str | None:
        return OUT_OF_SCOPE.get(self.name)


def data_dir() -> Path:
    import cryptography_vectors

    return Path(cryptography_vectors.__file__).parent / "x509" / "PKITS_data"


def expected_verdict(name: str) -> bool:
    if name in UNNAMED_VERDICTS:
        return UNNAMED_VERDICTS[name]
    if name.startswith("Valid"):
        return True
    if name.startswith("Invalid"):
        return False
    raise ValueError(f"{name}: no expected verdict")


def _tlv(d: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `i` (test data: trusted)."""
    tag, n = d[i], d[i + 1]
    if n < 0x80:
        return tag, i + 2, i + 2 + n
    k = n & 0x7F
    length = int.from_bytes(d[i + 2 : i + 2 + k], "big")
    return tag, i + 2 + k, i + 2 + k + length


def _children(d: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    out = []
    i = start
    while i < end:
        tag, s, e = _tlv(d, i)
        out.append((tag, i, s, e))
        i = e
    return out


def smime_contents(path: Path) -> tuple[list[bytes], list[bytes]]:
    """(certificates, CRLs) as DER from the PKCS #7 SignedData of an S/MIME message; the
    signer's certificate (the case's end entity) first."""
    msg = email.message_from_bytes(path.read_bytes())
    der = None
    for part in msg.walk():
        if "pkcs7" in part.get_content_type():
            payload = part.get_payload()
            assert isinstance(payload, str)
            der = base64.b64decode(payload)
    assert der is not None, f"{path}: no PKCS #7 part"
    _, s, e = _tlv(der, 0)  # ContentInfo
    _, (_, _, cs, _) = _children(der, s, e)  # contentType, [0] content
    _, ss, se = _tlv(der, cs)  # SignedData
    certs: list[bytes] = []
    crls: list[bytes] = []
    signer_id = b""
    for tag, _, vs, ve in _children(der, ss, se):
        if tag in (0xA0, 0xA1):
            items = [der[j:ee] for _, j, _, ee in _children(der, vs, ve)]
            (certs if tag == 0xA0 else crls).extend(items)
        elif tag == 0x31 and certs:  # signerInfos: the first one's issuerAndSerialNumber
            (_, _, is_, ie), *_ = _children(der, vs, ve)
            _, (_, j, _, ee), *_ = _children(der, is_, ie)
            signer_id = der[j:ee]
    for i, c in enumerate(certs):  # the signer is the certificate with that issuer and serial
        _, ts, te = _tlv(c, _tlv(c, 0)[1])  # tbsCertificate
        fields = _children(c, ts, te)
        if fields[0][0] == 0xA0:
            fields = fields[1:]
        serial, issuer = fields[0], fields[2]
        if c[serial[1] : serial[3]] + c[issuer[1] : issuer[3]] == _strip_seq(signer_id):
            certs.insert(0, certs.pop(i))
            break
    else:
        raise AssertionError(f"{path}: the signer's certificate is not in the message")
    return certs, crls


def _strip_seq(d: bytes) -> bytes:
    """issuerAndSerialNumber holds (issuer, serial): the certificate has (serial, ..., issuer)."""
    _, s, e = _tlv(d, 0)
    (_, i0, _, e0), (_, i1, _, e1) = _children(d, s, e)
    return d[i1:e1] + d[i0:e0]


@functools.cache
def trust_anchor() -> bytes:
    return (data_dir() / "certs" / "TrustAnchorRootCertificate.crt").read_bytes()


@functools.cache
def cases() -> tuple[Case, ...]:
    out = []
    smime = data_dir() / "smime"
    for section, _, names in SECTIONS:
        for n, name in enumerate(names, 1):
            certs, crls = smime_contents(smime / f"Signed{name}.eml")
            out.append(Case(f"{section}.{n}", name, section, expected_verdict(name),
                            tuple(certs), tuple(crls)))
    return tuple(out)


# --- running a case both ways -------------------------------------------------------------------

AT_TEXT = "2025-06-01T12:00:00+00:00"  # inside every PKITS certificate's validity (2010-2030)
DOOR = "pkits-door"


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    reason: str | None  # the denial's reason code


@functools.cache
def ee_keys() -> dict[bytes, object]:
    """Each end-entity certificate's private key, from the suite's PKCS #12 files (password
    "password"), by the certificate's DER."""
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    out: dict[bytes, object] = {}
    for f in sorted((data_dir() / "pkcs12").glob("*EE.p12")):
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(f.read_bytes(), b"password")
        except ValueError:  # DSA keys with inherited parameters do not load
            continue
        if cert is not None and key is not None:
            out[cert.public_bytes(Encoding.DER)] = key
    return out


def write_inputs(case: Case, folder: Path) -> tuple[Path, list[Path], list[Path], Path]:
    """The case as files, as a technician would pass them: (anchor, intermediates, CRLs, leaf)."""
    folder.mkdir(parents=True, exist_ok=True)
    anchor = folder / "anchor.crt"
    anchor.write_bytes(trust_anchor())
    intermediates = []
    for i, der in enumerate(case.certificates[1:]):
        p = folder / f"intermediate{i}.crt"
        p.write_bytes(der)
        intermediates.append(p)
    crls = []
    for i, der in enumerate(case.crls):
        p = folder / f"crl{i}.crl"
        p.write_bytes(der)
        crls.append(p)
    leaf = folder / "leaf.crt"
    leaf.write_bytes(case.certificates[0])
    return anchor, intermediates, crls, leaf


def run_door(case: Case, folder: Path) -> Outcome:
    """The door's way: the trust store the daemon loads from its configuration, the card's
    proof over a fresh challenge (signed with the end entity's PKCS #12 key), the stance and a
    policy that grants every PKITS end entity."""
    import datetime as dt
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    from gateway.access import check_presentation, decide
    from gateway.config import ProfileConfig, Stance, TrustConfig
    from gateway.domain import CardRead, ProofScheme
    from gateway.policy import DecisionState, Policy
    from gateway.trust.store import load_trust_store

    anchor, intermediates, crls, _ = write_inputs(case, folder)
    # Every end entity has a CN but one (4.13.14: an empty subject, a mailbox): the site's
    # profile names the identity its cards carry.
    source = "email" if case.name == "ValidDNnameConstraintsTest14" else "cn"
    profile = ProfileConfig("pkits", (), (), source, ())
    cfg = TrustConfig((anchor,), tuple(intermediates), tuple(crls), (profile,), 300.0, 0.0,
                      "deny", "deny", "deny")
    store = load_trust_store(cfg, None)
    at = dt.datetime.fromisoformat(AT_TEXT)
    challenge = os.urandom(32)
    key = ee_keys().get(case.certificates[0])
    if isinstance(key, rsa.RSAPrivateKey):
        scheme, sig = ProofScheme.RSA_PKCS1_SHA256, key.sign(challenge, padding.PKCS1v15(),
                                                              hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        scheme = ProofScheme.ECDSA_PREHASHED
        sig = key.sign(challenge, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    else:  # no usable key (DSA): the card cannot prove anything
        scheme, sig = ProofScheme.RSA_PKCS1_SHA256, b""
    read = CardRead("pkits", (case.certificates[0],), challenge, sig, scheme, "pkits", b"", 0.0)
    verdict = check_presentation(store, read, at.timestamp())
    policy = Policy.from_dict({
        "time_zone": "UTC", "doors": [DOOR],
        "access_levels": {"all": {"resources": [DOOR], "schedule": "always"}},
        "groups": {"everyone": {"access_levels": ["all"]}},
        "people": [{"id": "pkits", "identities": sorted(identities()), "groups": ["everyone"]}],
    })
    decision = decide(policy, verdict, DOOR, at, DecisionState(), Stance())
    return Outcome(decision.granted, None if decision.granted else decision.reason)


@functools.cache
def identities() -> frozenset[str]:
    from cryptography import x509

    from gateway.trust.identity import extract_identity

    out = set()
    for case in cases():
        try:
            cert = x509.load_der_x509_certificate(case.certificates[0])
        except ValueError:
            continue
        for source in ("cn", "email"):
            key = extract_identity(cert, source)
            if key:
                out.add(key)
    return frozenset(out)


def run_verify(case: Case, folder: Path) -> Outcome:
    """`portvakt verify --trust-anchor ... --intermediate ... --crl ... --json LEAF`, in process
    (the same entry point as the command line), with the default stance."""
    import contextlib
    import io
    import json

    from gateway.cli import main

    anchor, intermediates, crls, leaf = write_inputs(case, folder)
    args = ["verify", "--trust-anchor", str(anchor), "--at", AT_TEXT, "--json"]
    for p in intermediates:
        args += ["--intermediate", str(p)]
    for p in crls:
        args += ["--crl", str(p)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, str(leaf)])
    if code not in (0, 1):
        raise AssertionError(f"{case.name}: portvakt verify exited {code}: {err.getvalue()}")
    (result,) = json.loads(out.getvalue())
    assert (code == 0) == result["valid"]
    return Outcome(result["valid"], result.get("reason"))


def tally(folder: Path) -> str:
    """The markdown table of every case through the door's way (docs/trust.md)."""
    rows = ["| case | name | NIST | Portvakt | verdict |", "|---|---|---|---|---|"]
    agree = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for case in cases():
        got = run_door(case, folder / case.number)
        ok = got.accepted == case.expected
        total[case.required] += 1
        agree[case.required] += ok
        status = "agrees" if ok else f"out of scope: {case.out_of_scope}"
        rows.append(f"| {case.number} | {case.name} | {'accept' if case.expected else 'reject'} "
                    f"| {'accept' if got.accepted else 'reject (' + str(got.reason) + ')'} "
                    f"| {status} |")
    rows.append("")
    rows.append(f"Required sections ({', '.join(REQUIRED_SECTIONS)}): {agree[True]} of "
                f"{total[True]} agree. Other sections: {agree[False]} of {total[False]} agree.")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(tally(Path(tmp)))
