"""The signed policy bundle and the store that keeps the last good one: what is accepted, what is
refused and why, and that a refusal or a failed write never disturbs the policy in force."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.bundle import (
    FORMAT,
    MAX_ENVELOPE_BYTES,
    REASONS,
    BundleError,
    PolicyStore,
    PolicyStoreError,
    SigningKey,
    Status,
    VerifiedBundle,
    key_id,
    load_keys,
    make_bundle,
    open_bundle,
    sign_bundle,
    sign_payload,
    stale,
)
from gateway.errors import InputError
from gateway.journal import SCHEMA_VERSION, Journal
from tests.pnr import luhn

SITE = "sto-hq"
ISSUED = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
NOW = ISSUED + timedelta(hours=1)

ED = ed25519.Ed25519PrivateKey.generate()
EC = ec.generate_private_key(ec.SECP256R1())
OTHER = ed25519.Ed25519PrivateKey.generate()  # not pinned


def content(people: int = 2) -> dict[str, Any]:
    return {
        "time_zone": "Europe/Stockholm",
        "doors": ["main", "lab"],
        "schedules": {"office": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                  "from": "07:00", "to": "18:00"}]},
        "access_levels": {"office": {"resources": ["main", "lab"], "schedule": "office"}},
        "groups": {"staff": {"access_levels": ["office"]}, "security": {}},
        "people": [{"id": f"p{i}", "identities": [f"upn:user{i}@example.se"], "groups": ["staff"]}
                   for i in range(people)],
        "door_modes": {"main": {"free_access": "office", "first_person_in": True}},
        "lockdown_override": "security",
    }


def bundle(version: int = 1, **changes: Any) -> dict[str, Any]:
    b = make_bundle(content(), version=version, site=SITE, issued_at=ISSUED,
                    not_after=ISSUED + timedelta(days=30))
    b.update(changes)
    return b


def signed(version: int = 1, key: SigningKey = ED, **changes: Any) -> bytes:
    return sign_bundle(bundle(version, **changes), key)


def raw_signed(payload: Any, key: SigningKey = ED) -> bytes:
    """An envelope over any payload (a dict is serialised as is, bytes taken verbatim)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return sign_payload(data, key)


def opened(envelope: bytes, site: str = SITE) -> VerifiedBundle:
    return open_bundle(envelope, [ED.public_key(), EC.public_key()], site)


def refused(envelope: Any, reason: str, match: str | None = None, **kw: Any) -> BundleError:
    with pytest.raises(BundleError, match=match) as info:
        open_bundle(envelope, [ED.public_key(), EC.public_key()], kw.pop("site", SITE), **kw)
    assert info.value.reason == reason, info.value
    assert isinstance(info.value, InputError)
    return info.value


def envelope_dict(envelope: bytes) -> dict[str, Any]:
    d = json.loads(envelope)
    assert isinstance(d, dict)
    return d


def reseal(envelope: bytes, **fields: Any) -> bytes:
    return json.dumps({**envelope_dict(envelope), **fields}).encode()


# --- the format ----------------------------------------------------------------------------------

class TestOpen:
    @pytest.mark.parametrize("key", [ED, EC], ids=["ed25519", "ecdsa-p256"])
    def test_a_signed_bundle_opens_with_its_fields_and_loaded_policy(self, key: SigningKey) -> None:
        env = signed(7, key)
        b = opened(env)
        payload = base64.b64decode(envelope_dict(env)["payload"])
        assert (b.version, b.site, b.issued_at, b.not_after) == (
            7, SITE, ISSUED, ISSUED + timedelta(days=30))
        assert b.digest == hashlib.sha256(payload).hexdigest()
        assert b.key_id == key_id(key.public_key())
        assert b.content == content()
        assert set(b.policy.people) == {"p0", "p1"}
        assert b.policy.lockdown_override == "security"
        assert b.envelope == env

    def test_the_envelope_is_a_detached_signature_over_the_exact_payload_bytes(self) -> None:
        env = envelope_dict(signed(3, EC))
        assert set(env) == {"payload", "key_id", "alg", "signature"}
        payload = base64.b64decode(env["payload"])
        assert json.loads(payload.decode("utf-8"))["version"] == 3
        spki = EC.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert env["key_id"] == hashlib.sha256(spki).hexdigest()
        assert env["alg"] == "ecdsa-p256-sha256"
        EC.public_key().verify(base64.b64decode(env["signature"]), payload,
                               ec.ECDSA(hashes.SHA256()))  # raises if not
        assert envelope_dict(signed(3, ED))["alg"] == "ed25519"

    def test_several_pinned_keys_let_head_office_rotate(self) -> None:
        assert opened(signed(1, ED)).version == opened(signed(1, EC)).version == 1

    def test_a_key_that_is_not_pinned_is_unknown(self) -> None:
        e = refused(signed(1, OTHER), "unknown-key", r"^envelope\.key_id: ")
        assert key_id(OTHER.public_key()) in str(e)

    def test_a_tampered_payload_fails_the_signature(self) -> None:
        env = envelope_dict(signed(1))
        payload = base64.b64decode(env["payload"]).replace(b"user0@", b"mallory@")
        refused(reseal(signed(1), payload=base64.b64encode(payload).decode()), "bad-signature",
                r"^envelope\.signature: does not verify")

    def test_a_signature_by_another_key_under_a_pinned_key_id_fails(self) -> None:
        theirs = envelope_dict(signed(1, OTHER))
        refused(reseal(signed(1, ED), signature=theirs["signature"]), "bad-signature")

    def test_an_alg_that_does_not_match_the_pinned_key_fails(self) -> None:
        refused(reseal(signed(1, ED), alg="ecdsa-p256-sha256"), "bad-signature",
                r"envelope\.alg: ecdsa-p256-sha256 does not match")

    def test_a_bundle_for_another_site_is_refused(self) -> None:
        refused(signed(1), "wrong-site", r"^bundle\.site: .*'sto-hq'.*'gbg-1'", site="gbg-1")

    def test_another_format_is_unsupported(self) -> None:
        refused(raw_signed(bundle(format=2)), "unsupported-format", r"^bundle\.format: 2 ")

    @pytest.mark.parametrize(("changes", "match"), [
        ({"format": "1"}, r"^bundle\.format: expected the integer 1"),
        ({"version": 0}, r"^bundle\.version: expected an integer from 1"),
        ({"version": True}, r"^bundle\.version"),
        ({"version": "3"}, r"^bundle\.version"),
        ({"version": 2**63}, r"^bundle\.version"),
        ({"version": 1.0}, r"^bundle\.version"),
        ({"issued_at": "2026-06-01T08:00:00"}, r"^bundle\.issued_at: .*UTC offset"),
        ({"not_after": "2026-06-01"}, r"^bundle\.not_after"),
        ({"not_after": "2026-05-01T00:00:00+00:00"}, r"^bundle\.not_after: expected an instant after"),
        ({"site": ""}, r"^bundle\.site: expected a non-empty string"),
        ({"site": ["sto-hq"]}, r"^bundle\.site"),
        ({"signed_by": "me"}, r"^bundle\.signed_by: unknown key"),
        ({"content": []}, r"^bundle\.content: expected a JSON object"),
        ({"content": {**content(), "time_zone": "Mars/Olympus"}}, r"^bundle\.content\.time_zone: "),
        ({"content": {**content(), "shoe_size": 44}}, r"^bundle\.content\.shoe_size: unknown key"),
        ({"content": {"doors": []}}, r"^bundle\.content\.time_zone: missing"),
        ({"content": {**content(), "people": [{"id": "p", "identities": ["pnr:19121212-1213"]}]}},
         r"^bundle\.content\.people\[0\]\.identities\[0\]: .*check digit"),
        ({"content": {**content(), "door_modes": {"attic": {"free_access": "office"}}}},
         r"^bundle\.content\.door_modes\.attic: "),
    ])
    def test_schema_errors_name_the_field(self, changes: dict[str, Any], match: str) -> None:
        refused(raw_signed(bundle(**changes)), "schema", match)

    def test_a_missing_field_is_named(self) -> None:
        b = bundle()
        del b["not_after"]
        refused(raw_signed(b), "schema", r"^bundle\.not_after: missing")

    @pytest.mark.parametrize(("payload", "match"), [
        (b"\xff\xfe{}", r"^payload: not UTF-8"),
        (b"not json", r"^payload: not valid JSON"),
        (b'{"format": 1, "format": 1}', r"key 'format' appears twice"),
        (b'{"format": NaN}', r"NaN is not JSON"),
        (b"[1, 2]", r"^bundle: expected a JSON object"),
        (b"[" * 100_000, r"payload: (nested too deeply|not valid JSON)"),
    ])
    def test_a_signed_payload_that_is_no_bundle_is_a_schema_error(self, payload: bytes,
                                                                  match: str) -> None:
        refused(raw_signed(payload), "schema", match)

    @pytest.mark.parametrize(("envelope", "match"), [
        (b"", r"^envelope: not valid JSON"),
        (b"garbage", r"^envelope: not valid JSON"),
        (b"\x80\x81", r"^envelope: not UTF-8"),
        (b"[]", r"^envelope: expected a JSON object"),
        (b'{"payload": "", "key_id": "", "alg": "ed25519"}', r"^envelope\.signature: missing"),
        (b'{"payload": "", "payload": ""}', r"appears twice"),
        ("text, not bytes", r"^envelope: expected bytes"),
    ])
    def test_an_unreadable_envelope_is_a_bad_envelope(self, envelope: Any, match: str) -> None:
        refused(envelope, "bad-envelope", match)

    @pytest.mark.parametrize(("field", "value", "match"), [
        ("key_id", "abc", r"^envelope\.key_id: expected 64 hex digits"),
        ("key_id", 12, r"^envelope\.key_id"),
        ("alg", "rsa-pss", r"^envelope\.alg: expected one of ed25519, ecdsa-p256-sha256"),
        ("payload", "not base64!", r"^envelope\.payload: not valid base64"),
        ("payload", "é", r"^envelope\.payload: not valid base64"),
        ("signature", None, r"^envelope\.signature: expected a base64 string"),
        ("comment", "hello", r"^envelope\.comment: unknown key"),
    ])
    def test_each_bad_envelope_field_is_named(self, field: str, value: Any, match: str) -> None:
        refused(reseal(signed(1), **{field: value}), "bad-envelope", match)

    def test_an_envelope_over_the_size_cap_is_refused_before_parsing(self) -> None:
        env = signed(1)
        refused(env, "too-large", r"^envelope: .* bytes, more than the 100 allowed", max_bytes=100)
        refused(b"{" * 101, "too-large", max_bytes=100)
        assert opened(env).version == 1
        assert MAX_ENVELOPE_BYTES == 64 * 1024 * 1024

    def test_every_reason_code_is_declared(self) -> None:
        assert {"bad-envelope", "unknown-key", "bad-signature", "wrong-site", "schema",
                "unsupported-format", "too-large", "conflict", "rollback"} <= REASONS

    def test_two_digit_year_identity_numbers_are_read_as_of_the_issue_date(self) -> None:
        # 261129 is tomorrow's birthday on 2026-11-28 (so 1926) and yesterday's on 2026-11-30.
        head, tail = "261129", "123"
        check = luhn(head + tail)
        c = content()
        c["people"][0]["identities"].append(f"pnr:{head}-{tail}{check}")
        keys = []
        for day in (28, 30):
            issued = datetime(2026, 11, day, tzinfo=UTC)
            b = make_bundle(c, version=1, site=SITE, issued_at=issued,
                            not_after=issued + timedelta(days=1))
            keys.append({k for k in opened(sign_bundle(b, ED)).policy.holders if k.startswith("pnr")})
        assert keys == [{f"pnr:19{head}{tail}{check}"}, {f"pnr:20{head}{tail}{check}"}]


class TestSignAndKeys:
    def test_sign_bundle_refuses_what_a_gateway_would_refuse(self) -> None:
        with pytest.raises(BundleError, match=r"^bundle\.content\.door_modes\.main\.free_access"):
            sign_bundle(bundle(content={**content(), "door_modes": {"main": {"free_access": "x"}}}),
                        ED)
        with pytest.raises(BundleError, match=r"^bundle: not representable as JSON"):
            sign_bundle(bundle(content={**content(), "when": datetime.now(UTC)}), ED)

    def test_only_ed25519_and_p256_keys_sign(self) -> None:
        for key in (ec.generate_private_key(ec.SECP384R1()),
                    rsa.generate_private_key(public_exponent=65537, key_size=2048)):
            with pytest.raises(InputError, match="Ed25519 or ECDSA P-256"):
                sign_payload(b"{}", key)  # type: ignore[arg-type]

    def test_make_bundle_writes_format_1_and_times_to_the_second(self) -> None:
        b = make_bundle({}, version=2, site="s", issued_at=datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
                        not_after=datetime(2026, 2, 1, tzinfo=timezone(timedelta(hours=1))))
        assert b == {"format": FORMAT, "version": 2, "site": "s", "issued_at": "2026-01-01T00:00:00+00:00",
                     "not_after": "2026-02-01T00:00:00+01:00", "content": {}}

    def test_load_keys_reads_pem_public_keys(self, tmp_path: Path) -> None:
        paths = []
        for name, key in (("ed.pub", ED), ("ec.pub", EC)):
            p = tmp_path / name
            p.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
            paths.append(p)
        assert [key_id(k) for k in load_keys(paths)] == [key_id(ED), key_id(EC)]

    @pytest.mark.parametrize(("data", "match"), [
        (None, "cannot read"),
        (b"garbage", "expected a PEM public key"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), "expected an Ed25519 or ECDSA P-256"),
    ])
    def test_load_keys_names_the_bad_file(self, tmp_path: Path, data: bytes | None, match: str) -> None:
        p = tmp_path / "hq.pub"
        if data is not None:
            p.write_bytes(data)
        with pytest.raises(InputError, match=f"^{p}: {match}"):
            load_keys([p])

    def test_stale_is_strictly_past_not_after(self) -> None:
        b = opened(signed(1))
        assert not stale(b, b.not_after)
        assert stale(b, b.not_after + timedelta(seconds=1))
        assert not stale(b, b.not_after.timestamp())
        assert stale(b, b.not_after.timestamp() + 0.5)
        with pytest.raises(ValueError, match="aware"):
            stale(b, datetime(2026, 1, 1))


# --- never a traceback ---------------------------------------------------------------------------

def _open_or_refuse(envelope: Any) -> VerifiedBundle | None:
    try:
        return opened(envelope)
    except BundleError as e:
        assert e.reason in REASONS
        return None


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner,
                                                                         max_size=3)),
    max_leaves=8)
_B64 = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
_KEY_IDS = st.one_of(st.just(key_id(ED)), st.just(key_id(OTHER)), st.text(max_size=70),
                     st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_opened_or_refused_never_a_traceback(data: bytes) -> None:
    assert _open_or_refuse(data) is None


@settings(max_examples=300, deadline=None)
@given(env=st.fixed_dictionaries(
    {"payload": st.one_of(_B64, _JSON), "key_id": st.one_of(_KEY_IDS, _JSON),
     "alg": st.one_of(st.sampled_from(["ed25519", "ecdsa-p256-sha256"]), _JSON),
     "signature": st.one_of(_B64, _JSON)},
    optional={"extra": _JSON}))
def test_any_envelope_shaped_json_is_refused_never_a_traceback(env: dict[str, Any]) -> None:
    assert _open_or_refuse(json.dumps(env).encode()) is None


_BUNDLES = st.fixed_dictionaries(
    {},
    optional={"format": st.one_of(st.just(1), _JSON), "version": st.one_of(st.integers(), _JSON),
              "issued_at": st.one_of(st.just(ISSUED.isoformat()), st.text(max_size=30), _JSON),
              "not_after": st.one_of(st.just((ISSUED + timedelta(days=1)).isoformat()),
                                     st.datetimes(timezones=st.timezones()).map(datetime.isoformat)),
              "site": st.one_of(st.just(SITE), _JSON),
              "content": st.one_of(st.just(content()), _JSON,
                                   st.dictionaries(st.sampled_from(sorted(content())), _JSON)),
              "other": _JSON})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(_BUNDLES, _JSON))
def test_any_signed_payload_is_opened_or_refused_never_a_traceback(payload: Any) -> None:
    _open_or_refuse(raw_signed(payload))


ENVELOPE_V1 = signed(1)
OPENED_V1 = opened(ENVELOPE_V1)


@settings(max_examples=300, deadline=None)
@given(where=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_a_flipped_byte_anywhere_is_refused_or_changes_nothing(where: int, flip: int) -> None:
    env = bytearray(ENVELOPE_V1)
    env[where % len(env)] ^= flip
    b = _open_or_refuse(bytes(env))
    # Only a flip that decodes to the same payload (JSON whitespace, base64's spare bits) opens.
    assert b is None or b.digest == OPENED_V1.digest



# --- the store -----------------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "portvakt.db"


def store(db: Path, *keys: SigningKey) -> PolicyStore:
    return PolicyStore(db, [k.public_key() for k in keys or (ED, EC)], SITE)


def rows(db: Path) -> list[tuple[int, str, bool]]:
    conn = sqlite3.connect(db)
    try:
        return [(v, d, e) for v, d, e in conn.execute(
            "SELECT version, digest, envelope IS NOT NULL FROM policy_bundle ORDER BY version")]
    finally:
        conn.close()


def tamper(db: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, args)
    conn.close()


class TestStore:
    def test_an_empty_store_has_no_policy(self, db: Path) -> None:
        with store(db) as s:
            assert s.current() is None

    def test_a_newer_bundle_is_applied_and_survives_a_restart(self, db: Path) -> None:
        with store(db) as s:
            o = s.offer(signed(1), NOW)
            assert (o.status, o.reason, o.version, o.previous) == (Status.APPLIED, None, 1, None)
            assert o.bundle is not None and o.bundle.version == 1
            o = s.offer(signed(5), NOW)
            assert (o.status, o.version, o.previous) == ("applied", 5, 1)
            assert o.digest == opened(signed(5)).digest
        with store(db) as s:
            b = s.current()
            assert b is not None and (b.version, b.site) == (5, SITE)
            assert set(b.policy.people) == {"p0", "p1"}

    def test_the_same_bundle_again_is_ignored(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(2), NOW)
            o = s.offer(signed(2), NOW)
            assert (o.status, o.reason, o.version, o.previous) == (Status.IGNORED, "duplicate", 2, 2)
            assert o.bundle is None
        assert [r[0] for r in rows(db)] == [2]

    def test_the_same_version_with_other_content_is_a_conflict(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(2), NOW)
            other = signed(2, content={**content(3)})
            o = s.offer(other, NOW)
            assert (o.status, o.reason, o.version, o.previous) == (Status.REJECTED, "conflict", 2, 2)
            assert "already in force with digest" in o.detail
            b = s.current()
            assert b is not None and set(b.policy.people) == {"p0", "p1"}

    def test_an_older_version_is_a_rollback(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(3), NOW)
            o = s.offer(signed(2), NOW)
            assert (o.status, o.reason, o.version, o.previous) == (Status.REJECTED, "rollback", 2, 3)
            assert s.current().version == 3  # type: ignore[union-attr]

    @pytest.mark.parametrize(("make", "reason"), [
        (lambda: signed(9, OTHER), "unknown-key"),
        (lambda: reseal(signed(9), signature=envelope_dict(signed(9, OTHER))["signature"]),
         "bad-signature"),
        (lambda: signed(9, site="gbg-1"), "wrong-site"),
        (lambda: raw_signed(bundle(9, content={"doors": []})), "schema"),
        (lambda: raw_signed(bundle(9, format=2)), "unsupported-format"),
        (lambda: b"garbage", "bad-envelope"),
    ])
    def test_a_bad_bundle_is_rejected_with_its_reason_and_the_previous_kept(
            self, db: Path, make: Callable[[], bytes], reason: str) -> None:
        with store(db) as s:
            s.offer(signed(1), NOW)
            o = s.offer(make(), NOW)
            assert (o.status, o.reason, o.previous) == (Status.REJECTED, reason, 1)
            assert o.detail
            assert s.current().version == 1  # type: ignore[union-attr]
        assert [r[0] for r in rows(db)] == [1]

    def test_an_envelope_over_the_cap_is_rejected_as_too_large(self, db: Path) -> None:
        with PolicyStore(db, [ED.public_key()], SITE, max_bytes=100) as s:
            o = s.offer(signed(1), NOW)
            assert (o.status, o.reason) == (Status.REJECTED, "too-large")

    def test_superseded_versions_stay_as_history_without_their_envelopes(self, db: Path) -> None:
        with store(db) as s:
            for v in (1, 2, 4):
                s.offer(signed(v), NOW)
        assert [(v, has) for v, _, has in rows(db)] == [(1, False), (2, False), (4, True)]

    def test_a_restart_resumes_and_still_refuses_a_rollback(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(4), NOW)
        with store(db) as s:
            assert s.offer(signed(3), NOW).reason == "rollback"
            assert s.offer(signed(4), NOW).status == Status.APPLIED  # not verified here yet: restored
            assert s.offer(signed(4), NOW).reason == "duplicate"

    def test_a_naive_now_is_a_programming_error(self, db: Path) -> None:
        with store(db) as s, pytest.raises(ValueError, match="aware"):
            s.offer(signed(1), datetime(2026, 6, 1))


class TestStoredCopyIsVerifiedAgain:
    def apply(self, db: Path, version: int = 3) -> None:
        with store(db) as s:
            assert s.offer(signed(version), NOW).status == Status.APPLIED

    @pytest.mark.parametrize(("sql", "args", "reason"), [
        ("UPDATE policy_bundle SET envelope = ?", (signed(3, OTHER),), "unknown-key"),
        ("UPDATE policy_bundle SET envelope = ?",
         (reseal(signed(3), payload=envelope_dict(signed(3, site="x"))["payload"]),), "bad-signature"),
        ("UPDATE policy_bundle SET envelope = NULL", (), "tampered"),
        ("UPDATE policy_bundle SET version = 99", (), "tampered"),
        ("UPDATE policy_bundle SET digest = ?", ("0" * 64,), "tampered"),
        ("UPDATE policy_bundle SET envelope = ?", (b"garbage",), "bad-envelope"),
        ("UPDATE policy_bundle SET envelope = ?", ("text",), "tampered"),
    ])
    def test_a_tampered_row_is_refused_with_a_clear_error(self, db: Path, sql: str,
                                                          args: tuple[Any, ...], reason: str) -> None:
        self.apply(db)
        tamper(db, sql, *args)
        with store(db) as s, pytest.raises(BundleError, match=rf"^{db}: the stored policy") as info:
            s.current()
        assert info.value.reason == reason

    def test_a_stored_bundle_for_another_site_is_refused(self, db: Path) -> None:
        self.apply(db)
        with PolicyStore(db, [ED.public_key()], "gbg-1") as s, pytest.raises(BundleError) as info:
            s.current()
        assert info.value.reason == "wrong-site"

    def test_after_a_refused_row_the_good_bundle_offered_again_restores_it(self, db: Path) -> None:
        self.apply(db)
        good = signed(3)
        tamper(db, "UPDATE policy_bundle SET envelope = ?", signed(3, OTHER))
        with store(db) as s:
            with pytest.raises(BundleError):
                s.current()
            o = s.offer(good, NOW)
            assert (o.status, o.version) == (Status.APPLIED, 3)
            assert "restored" in o.detail
            assert s.current().version == 3  # type: ignore[union-attr]

    def test_a_re_signed_payload_replaces_the_stored_signature_for_key_rotation(self, db: Path) -> None:
        b = bundle(3)
        with store(db, ED, EC) as s:
            s.offer(sign_bundle(b, ED), NOW)
            o = s.offer(sign_bundle(b, EC), NOW)  # head office re-signs with its new key
            assert (o.status, o.reason) == (Status.IGNORED, "duplicate")
            assert "now by key" in o.detail
        with store(db, EC) as s:  # the old key unpinned
            assert s.current().key_id == key_id(EC)  # type: ignore[union-attr]

    def test_a_re_signed_payload_with_a_bad_signature_is_rejected(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(3), NOW)
            s.current()
            bad = reseal(signed(3), signature=envelope_dict(signed(3, OTHER))["signature"])
            assert s.offer(bad, NOW).reason == "bad-signature"
            assert s.current().key_id == key_id(ED)  # type: ignore[union-attr]


class TestAtomicity:
    def test_a_write_failing_mid_apply_keeps_the_previous_and_writes_nothing(self, db: Path) -> None:
        with store(db) as s:
            s.offer(signed(1), NOW)
            before = rows(db)
            # The new row goes in, then dropping the old envelope fails: all of it must go.
            tamper(db, "CREATE TRIGGER fail BEFORE UPDATE ON policy_bundle "
                       "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
            o = s.offer(signed(2), NOW)
            assert (o.status, o.reason, o.version, o.previous) == (Status.REJECTED, "store-error", 2, 1)
            assert "disk on fire" in o.detail and "nothing changed" in o.detail
            assert rows(db) == before
            assert s.current().version == 1  # type: ignore[union-attr]
            tamper(db, "DROP TRIGGER fail")
            assert s.offer(signed(2), NOW).status == Status.APPLIED

    def test_an_exception_of_any_kind_inside_the_transaction_rolls_it_back(
            self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with store(db) as s:
            s.offer(signed(1), NOW)
            before = rows(db)
            calls = 0
            real = PolicyStore._top

            def top_then_interrupt(self: PolicyStore, conn: sqlite3.Connection) -> Any:
                nonlocal calls
                calls += 1
                if calls == 2:  # the re-check inside the write transaction
                    raise KeyboardInterrupt
                return real(self, conn)

            monkeypatch.setattr(PolicyStore, "_top", top_then_interrupt)
            with pytest.raises(KeyboardInterrupt):
                s.offer(signed(2), NOW)
            monkeypatch.undo()
            assert rows(db) == before
            assert not s._conn.in_transaction
            assert s.offer(signed(2), NOW).status == Status.APPLIED


class TestSharedDatabase:
    @pytest.mark.parametrize("store_first", [True, False])
    def test_the_store_and_the_journal_share_the_state_database(self, db: Path,
                                                                store_first: bool) -> None:
        if store_first:
            s = store(db)
            j = Journal(db, "gw-1")
        else:
            j = Journal(db, "gw-1")
            s = store(db)
        try:
            s.offer(signed(1), NOW)
            j.append("test.event")
            assert j.flush()
            conn = sqlite3.connect(db)
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            conn.close()
            assert [e.kind for e in j.events()] == ["test.event"]
            assert s.current().version == 1  # type: ignore[union-attr]
        finally:
            j.close()
            s.close()

    def test_writes_are_durable(self, db: Path) -> None:
        with store(db) as s:
            assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    def test_an_unusable_database_path_is_a_store_error(self, tmp_path: Path) -> None:
        (tmp_path / "dir.db").mkdir()
        with pytest.raises(PolicyStoreError, match=r"dir\.db: cannot open the policy store"):
            PolicyStore(tmp_path / "dir.db", [ED.public_key()], SITE)
