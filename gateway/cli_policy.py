"""`portvakt policy keygen|sign|verify|publish`: head office's tooling for signed policy bundles
(test keys, signing a policy document, publishing it to gateways over MQTT: gateway/cli_sync.py)
and the site technician's check of a bundle file.

Exit codes as everywhere: 0 ok, 1 the bundle is refused (unknown key, bad signature, wrong site,
invalid content), 2 unreadable input or bad usage (missing file, not an envelope, a bad key file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from gateway.bundle import (
    BundleError,
    SigningKey,
    VerifiedBundle,
    key_id,
    load_keys,
    make_bundle,
    open_bundle,
    sign_bundle,
    stale,
)
from gateway.errors import InputError

UNREADABLE = frozenset({"bad-envelope", "too-large"})  # exit 2; every other refusal is a verdict


# --- keygen --------------------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise InputError(f"{path}: exists; not overwritten (use --force)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)  # a file that existed keeps its mode through O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the folder: {e.strerror}") from None
    key: SigningKey = (ed25519.Ed25519PrivateKey.generate() if args.alg == "ed25519"
                       else ec.generate_private_key(ec.SECP256R1()))
    private, public = out / f"{args.name}.key", out / f"{args.name}.pub"
    if not args.force:
        for p in (private, public):
            if p.exists():
                raise InputError(f"{p}: exists; not overwritten (use --force)")
    _write(private, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), 0o600,
           args.force)
    _write(public, key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
           0o644, args.force)
    print(f"private key  {private}  (mode 0600: keep it at head office, never on a gateway)")
    print(f"public key   {public}  (pin it in each gateway's [policy] keys)")
    print(f"key id       {key_id(key)}")
    return 0


# --- sign ----------------------------------------------------------------------------------------

def private_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the signing key: {e.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(f"{path}: the private key is encrypted; this test tool reads unencrypted "
                         "PKCS#8 PEM keys only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: expected a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if isinstance(key, ed25519.Ed25519PrivateKey) or (
            isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        return key
    raise InputError(f"{path}: expected an Ed25519 or ECDSA P-256 private key, got "
                     f"{type(key).__name__.removeprefix('_')}")


def _plain(v: Any) -> Any:
    """TOML's dates and times as the ISO 8601 strings the policy document uses."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    return v


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise ValueError(f"the key {dup!r} appears twice in one object")  # the last would win
    return d


def read_document(path: Path) -> dict[str, Any]:
    """A policy document from a JSON file or (by its .toml suffix) a TOML file. Raises InputError
    naming the file and, for a syntax error, the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the policy document: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            doc = _plain(tomllib.loads(data.decode("utf-8")))
        else:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=_unique)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a policy document (a JSON object), got {type(doc).__name__}")
    return doc


def cmd_sign(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.input is None):
        raise InputError("expected the policy document once: FILE or --in FILE")
    args.input = args.input or args.file
    if args.out is None:
        args.out = args.input.with_name(args.input.name + ".bundle")
    if args.version < 1:
        raise InputError(f"--version: expected an integer from 1, got {args.version}")
    if not args.site.strip():
        raise InputError("--site: expected the site's name")
    if not args.valid_days > 0:
        raise InputError(f"--valid-days: expected more than 0, got {args.valid_days}")
    key = private_key(args.key)
    doc = read_document(args.input)
    now = datetime.now(UTC).replace(microsecond=0)
    b = make_bundle(doc, version=args.version, site=args.site, issued_at=now,
                    not_after=now + timedelta(days=args.valid_days))
    try:
        envelope = sign_bundle(b, key)
    except BundleError as e:
        raise InputError(f"{args.input}: {e}") from None
    out: Path = args.out
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(envelope)
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror}") from None
    print(f"{out}: policy version {args.version} for site {args.site}, signed by key "
          f"{key_id(key)[:16]}, valid until {b['not_after']} ({len(envelope):,} bytes)")
    return 0


# --- verify --------------------------------------------------------------------------------------

def summary(b: VerifiedBundle, now: datetime) -> dict[str, Any]:
    """What a technician wants to know about a verified bundle."""
    p = b.policy
    return {"version": b.version, "site": b.site, "issued_at": b.issued_at.isoformat(),
            "not_after": b.not_after.isoformat(), "stale": stale(b, now), "key_id": b.key_id,
            "digest": b.digest, "people": len(p.people), "identities": len(p.holders),
            "doors": len(p.doors), "printers": len(p.printers), "groups": len(p.groups),
            "free_access_doors": sorted(p.free_access), "lockdown_override": p.lockdown_override}


def cmd_verify(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as e:
        print(f"{path}: unreadable: {e.strerror}", file=sys.stderr)
        return 2
    keys = load_keys(args.key)
    try:
        b = open_bundle(data, keys, args.site)
    except BundleError as e:
        if args.json:
            print(json.dumps({"file": str(path), "valid": False, "reason": e.reason, "detail": str(e)}))
        if e.reason in UNREADABLE:
            print(f"{path}: unreadable ({e.reason}): {e}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"{path}: REFUSED ({e.reason}): {e}")
        return 1
    s = summary(b, datetime.now(UTC))
    if args.json:
        print(json.dumps({"file": str(path), "valid": True, **s}, indent=2))
        return 0
    print(f"{path}: valid")
    print(f"  version    {s['version']}")
    print(f"  site       {s['site']}")
    print(f"  issued_at  {s['issued_at']}")
    print(f"  not_after  {s['not_after']}" + ("  STALE: past not_after (a gateway raises an alarm "
                                               "and keeps deciding on it)" if s["stale"] else ""))
    print(f"  key id     {s['key_id']}")
    print(f"  digest     {s['digest']}")
    print(f"  people {s['people']} ({s['identities']} identity keys), doors {s['doors']}, "
          f"printers {s['printers']}, groups {s['groups']}")
    if s["free_access_doors"]:
        print(f"  free access scheduled at {', '.join(s['free_access_doors'])}")
    if s["lockdown_override"]:
        print(f"  lockdown override group {s['lockdown_override']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="signed policy bundles: test keys, signing, verifying, "
                                      "publishing")
    ps = p.add_subparsers(dest="sub", required=True)

    k = ps.add_parser("keygen", help="write a policy signing key pair (head office, tests, demo)")
    k.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.pub")
    k.add_argument("--alg", choices=("ed25519", "ecdsa-p256"), default="ed25519")
    k.add_argument("--name", default="policy-signing", help="file name stem (default %(default)s)")
    k.add_argument("--force", action="store_true", help="overwrite existing files")
    k.set_defaults(func=cmd_keygen)

    s = ps.add_parser("sign", help="wrap a policy document (JSON or TOML) into a signed bundle")
    s.add_argument("--key", type=Path, required=True, help="PEM private key (Ed25519 or P-256)")
    s.add_argument("file", type=Path, nargs="?", help="policy document: .json, or .toml")
    s.add_argument("--in", dest="input", type=Path, help="the same, as an option")
    s.add_argument("--version", type=int, required=True, help="policy version, higher than the last")
    s.add_argument("--site", required=True)
    s.add_argument("--valid-days", type=float, default=30.0,
                   help="not_after is this many days after now (default %(default)s)")
    s.add_argument("--out", type=Path,
                   help="the envelope file to write (default: the document's name + .bundle)")
    s.set_defaults(func=cmd_sign)

    v = ps.add_parser("verify", help="check a bundle file as a gateway would; show what it holds")
    v.add_argument("file", type=Path)
    v.add_argument("--key", type=Path, action="append", required=True,
                   help="pinned PEM public key (repeat for several)")
    v.add_argument("--site", required=True, help="the gateway's site")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    from gateway.cli_sync import add_policy_publish

    add_policy_publish(ps)
