"""`portvakt policy keygen`, `sign` and `verify` as head office and a site technician run them."""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.bundle import key_id, load_keys, make_bundle, open_bundle, sign_bundle
from gateway.cli import main

SITE = "sto-1"

TOML_POLICY = """\
time_zone = "Europe/Stockholm"
doors = ["main", "lab"]
printers = ["p1"]
lockdown_override = "security"

[[schedules.office]]
days = ["mon", "tue", "wed", "thu", "fri"]
from = 07:00:00   # a TOML time
to = "18:00"

[[holidays]]
date = 2026-12-25   # a TOML date; no schedule: closed

[access_levels.office]
resources = ["main", "lab", "p1"]
schedule = "office"

[groups.staff]
access_levels = ["office"]

[groups.security]

[[people]]
id = "p-alice"
identities = ["upn:alice@example.se"]
groups = ["staff"]

[[people]]
id = "p-bob"
identities = ["upn:bob@example.se"]
groups = ["staff", "security"]
flags = ["extended_access"]

[[temporary_cards]]
identity = "serial:TMP-1"
person = "p-alice"
valid_from = 2026-06-08T08:00:00+02:00   # a TOML offset date-time
valid_until = 2026-06-12T17:00:00+02:00

[door_modes.main]
free_access = "office"
first_person_in = true
"""


def document() -> dict[str, Any]:
    return {
        "time_zone": "Europe/Stockholm",
        "doors": ["main", "lab", "dock"],
        "schedules": {"office": [{"days": ["mon", "fri"], "from": "07:00", "to": "18:00"}]},
        "access_levels": {"office": {"resources": ["main", "lab"], "schedule": "office"}},
        "groups": {"staff": {"access_levels": ["office"]}},
        "people": [{"id": "p-alice", "identities": ["upn:alice@example.se"], "groups": ["staff"]}],
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    code, out, _ = run(capsys, "policy", "keygen", "--out", tmp_path / "keys")
    assert code == 0
    return tmp_path / "keys" / "policy-signing.key", tmp_path / "keys" / "policy-signing.pub"


@pytest.fixture
def bundle_file(tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(document()))
    out = tmp_path / "policy.bundle"
    code, _, err = run(capsys, "policy", "sign", "--key", keys[0], "--in", doc, "--version", "4",
                       "--site", SITE, "--out", out)
    assert code == 0, err
    return out


class TestKeygen:
    def test_writes_a_private_key_only_its_owner_reads_and_the_public_key(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "policy", "keygen", "--out", tmp_path / "k")
        assert code == 0
        private, public = tmp_path / "k" / "policy-signing.key", tmp_path / "k" / "policy-signing.pub"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        key = load_pem_private_key(private.read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        (pub,) = load_keys([public])
        assert key_id(pub) == key_id(key) and key_id(key) in out

    def test_ecdsa_p256_on_request(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run(capsys, "policy", "keygen", "--out", tmp_path, "--alg", "ecdsa-p256",
                   "--name", "hq")[0] == 0
        key = load_pem_private_key((tmp_path / "hq.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    def test_never_overwrites_a_key_unless_forced(self, keys: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        before = keys[0].read_bytes()
        code, _, err = run(capsys, "policy", "keygen", "--out", keys[0].parent)
        assert code == 2 and f"{keys[0]}: exists" in err
        assert keys[0].read_bytes() == before
        keys[0].chmod(0o644)
        assert run(capsys, "policy", "keygen", "--out", keys[0].parent, "--force")[0] == 0
        assert keys[0].read_bytes() != before
        assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600


class TestSign:
    def test_a_json_document_becomes_a_bundle_a_gateway_opens(
            self, bundle_file: Path, keys: tuple[Path, Path]) -> None:
        b = open_bundle(bundle_file.read_bytes(), load_keys([keys[1]]), SITE)
        assert (b.version, b.site) == (4, SITE)
        assert b.content == document()
        assert timedelta(days=29.9) < b.not_after - b.issued_at < timedelta(days=30.1)
        assert abs(b.issued_at - datetime.now(UTC)) < timedelta(minutes=5)

    def test_a_toml_document_with_toml_dates_and_times(
            self, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
        doc = tmp_path / "policy.toml"
        doc.write_text(TOML_POLICY)
        out = tmp_path / "b.json"
        code, printed, err = run(capsys, "policy", "sign", "--key", keys[0], "--in", doc,
                                 "--version", "1", "--site", SITE, "--valid-days", "2", "--out", out)
        assert code == 0, err
        assert "policy version 1 for site sto-1" in printed
        b = open_bundle(out.read_bytes(), load_keys([keys[1]]), SITE)
        assert b.content["schedules"]["office"][0]["from"] == "07:00:00"
        assert b.content["holidays"] == [{"date": "2026-12-25"}]
        assert b.content["temporary_cards"][0]["valid_from"] == "2026-06-08T08:00:00+02:00"
        assert b.policy.free_access["main"].first_person_in
        assert b.policy.extended_time("upn:bob@example.se")
        assert timedelta(days=1.9) < b.not_after - b.issued_at < timedelta(days=2.1)

    @pytest.mark.parametrize(("content", "suffix", "match"), [
        ('{"time_zone": "Europe/Stockholm", "doors": ["a"], "door_modes": {"b": {"free_access": '
         '"always"}}}', ".json", r"policy\.json: bundle\.content\.door_modes\.b: expected the name of a"),
        ("{not json", ".json", r"policy\.json: not valid JSON"),
        ('{"doors": [], "doors": ["a"]}', ".json", r"policy\.json: .*'doors' appears twice"),
        ("[1]", ".json", r"policy\.json: expected a policy document"),
        ('time_zone = "UTC"\ndoors = ]\n', ".toml", r"policy\.toml: not valid TOML: .*line 2"),
        ('time_zone = "UTC"\n[[temporary_cards]]\nidentity = "serial:1"\nperson = "p"\n'
         "valid_from = 2026-06-08T08:00:00\nvalid_until = 2026-06-09T08:00:00\n", ".toml",
         r"policy\.toml: bundle\.content\.temporary_cards\[0\]\.person"),
    ])
    def test_an_invalid_document_is_exit_2_naming_file_and_field(
            self, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
            content: str, suffix: str, match: str) -> None:
        doc = tmp_path / f"policy{suffix}"
        doc.write_text(content)
        out = tmp_path / "b.json"
        code, _, err = run(capsys, "policy", "sign", "--key", keys[0], "--in", doc, "--version", "1",
                           "--site", SITE, "--out", out)
        assert code == 2
        assert err.startswith("portvakt: error: ")
        assert re.search(match, err), err
        assert not out.exists()

    @pytest.mark.parametrize(("args", "match"), [
        (["--version", "0"], "--version: expected an integer from 1"),
        (["--valid-days", "0"], "--valid-days: expected more than 0"),
        (["--site", " "], "--site: expected"),
        (["--key", "MISSING"], "missing: cannot read the signing key"),
        (["--key", "PUBLIC"], "expected a PEM private key"),
        (["--in", "MISSING"], "missing: cannot read the policy document"),
    ])
    def test_bad_arguments_are_exit_2_naming_them(
            self, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
            args: list[str], match: str) -> None:
        doc = tmp_path / "policy.json"
        doc.write_text(json.dumps(document()))
        given = {"--key": str(keys[0]), "--in": str(doc), "--version": "1", "--site": SITE,
                 "--out": str(tmp_path / "b.json")}
        subs = {"MISSING": str(tmp_path / "missing"), "PUBLIC": str(keys[1])}
        given.update(zip(args[::2], [subs.get(a, a) for a in args[1::2]], strict=True))
        code, _, err = run(capsys, "policy", "sign", *[x for kv in given.items() for x in kv])
        assert code == 2 and match in err, err


class TestVerify:
    def test_a_good_bundle_is_described_and_exit_0(self, bundle_file: Path, keys: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "policy", "verify", bundle_file, "--key", keys[1], "--site", SITE)
        assert code == 0
        assert f"{bundle_file}: valid" in out
        assert "version    4" in out and f"site       {SITE}" in out
        assert "issued_at  " in out and "not_after  " in out and "STALE" not in out
        assert "people 1 (1 identity keys), doors 3, printers 0, groups 1" in out

    def test_json_output(self, bundle_file: Path, keys: tuple[Path, Path],
                         capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "policy", "verify", bundle_file, "--key", keys[1], "--site", SITE,
                           "--json")
        r = json.loads(out)
        assert code == 0 and r["valid"] and (r["version"], r["people"], r["doors"]) == (4, 1, 3)

    def test_several_keys_may_be_given(self, bundle_file: Path, keys: tuple[Path, Path],
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        run(capsys, "policy", "keygen", "--out", tmp_path / "new")
        code, _, _ = run(capsys, "policy", "verify", bundle_file, "--key",
                         tmp_path / "new" / "policy-signing.pub", "--key", keys[1], "--site", SITE)
        assert code == 0

    def test_a_stale_bundle_is_valid_with_a_warning(self, tmp_path: Path, keys: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        key = load_pem_private_key(keys[0].read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        issued = datetime(2025, 1, 1, tzinfo=UTC)
        old = tmp_path / "old.bundle"
        old.write_bytes(sign_bundle(make_bundle(document(), version=1, site=SITE, issued_at=issued,
                                                not_after=issued + timedelta(days=1)), key))
        code, out, _ = run(capsys, "policy", "verify", old, "--key", keys[1], "--site", SITE)
        assert code == 0 and "STALE: past not_after" in out

    def test_the_wrong_key_is_refused_exit_1(self, bundle_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        run(capsys, "policy", "keygen", "--out", tmp_path / "other")
        code, out, _ = run(capsys, "policy", "verify", bundle_file, "--key",
                           tmp_path / "other" / "policy-signing.pub", "--site", SITE)
        assert code == 1 and "REFUSED (unknown-key): envelope.key_id:" in out

    def test_a_tampered_payload_is_refused_exit_1(self, bundle_file: Path, keys: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        env = json.loads(bundle_file.read_bytes())
        payload = base64.b64decode(env["payload"]).replace(b"p-alice", b"p-mally")
        env["payload"] = base64.b64encode(payload).decode()
        bundle_file.write_text(json.dumps(env))
        code, out, _ = run(capsys, "policy", "verify", bundle_file, "--key", keys[1], "--site", SITE)
        assert code == 1 and "REFUSED (bad-signature)" in out

    def test_the_wrong_site_is_refused_exit_1(self, bundle_file: Path, keys: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "policy", "verify", bundle_file, "--key", keys[1], "--site", "gbg")
        assert code == 1 and "REFUSED (wrong-site): bundle.site: the bundle is for site 'sto-1'" in out

    @pytest.mark.parametrize("content", [b"", b"garbage", b"\x00\xff" * 100, b'{"doors": []}'])
    def test_a_file_that_is_no_envelope_is_unreadable_exit_2(
            self, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
            content: bytes) -> None:
        bad = tmp_path / "bad.bundle"
        bad.write_bytes(content)
        code, out, err = run(capsys, "policy", "verify", bad, "--key", keys[1], "--site", SITE)
        assert code == 2 and out == ""
        assert err.startswith(f"{bad}: unreadable (bad-envelope): envelope")

    def test_a_missing_file_is_exit_2(self, tmp_path: Path, keys: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(capsys, "policy", "verify", tmp_path / "nope", "--key", keys[1], "--site", SITE)
        assert code == 2 and "nope: unreadable: No such file or directory" in err

    def test_a_bad_key_file_is_exit_2_naming_it(self, bundle_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(capsys, "policy", "verify", bundle_file, "--key", bundle_file, "--site", SITE)
        assert code == 2 and f"{bundle_file}: expected a PEM public key" in err
        code, _, err = run(capsys, "policy", "verify", bundle_file, "--key", tmp_path / "x.pub",
                           "--site", SITE)
        assert code == 2 and "x.pub: cannot read" in err


def test_the_installed_command_end_to_end_without_tracebacks(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("portvakt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]

    def portvakt(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=60)

    assert portvakt("policy", "keygen", "--out", tmp_path, "--alg", "ecdsa-p256").returncode == 0
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(document()))
    r = portvakt("policy", "sign", "--key", tmp_path / "policy-signing.key", "--in", doc,
                 "--version", "7", "--site", SITE, "--out", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    r = portvakt("policy", "verify", tmp_path / "b.json", "--key", tmp_path / "policy-signing.pub",
                 "--site", SITE)
    assert r.returncode == 0 and "version    7" in r.stdout, r.stderr
    (tmp_path / "garbage").write_bytes(b"\x89PNG\r\n")
    for name, code in (("garbage", 2), ("b.json", 0), ("missing", 2)):
        r = portvakt("policy", "verify", tmp_path / name, "--key", tmp_path / "policy-signing.pub",
                     "--site", SITE)
        assert r.returncode == code and "Traceback" not in r.stderr, r.stderr


def test_sign_takes_the_document_as_an_argument_and_names_the_bundle_after_it(
        tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "site.json"
    doc.write_text(json.dumps(document()))
    code, _, err = run(capsys, "policy", "sign", doc, "--key", keys[0], "--version", "2",
                       "--site", SITE)
    assert code == 0, err
    code, out, _ = run(capsys, "policy", "verify", tmp_path / "site.json.bundle", "--key",
                       keys[1], "--site", SITE)
    assert code == 0 and "version    2" in out
    code, _, err = run(capsys, "policy", "sign", doc, "--in", doc, "--key", keys[0],
                       "--version", "3", "--site", SITE)
    assert code == 2 and "once" in err
