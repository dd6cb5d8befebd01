"""Head office's side of MQTT sync on the command line (docs/mqtt.md):

    portvakt policy publish FILE --gateway G ...   a signed bundle, retained, for each gateway
    portvakt crl publish FILE                      a CRL (or a notice of one) for the fleet
    portvakt cmd send ACTION --site S --gateway G --key KEY
    portvakt hq collect --store FILE               every gateway's events into SQLite, acked

Content above --inline-limit travels as a signed manifest: the file is copied into
--upload-dir (served at --base-url by any HTTPS server) and the manifest, signed with
--manifest-key, is what goes on the broker. Exit codes: 0 done, 1 the broker refused or could
not be reached, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import InputError
from gateway.sync.mqtt import BrokerError, BrokerParams, read_secret
from gateway.sync.signed import (
    make_command,
    make_manifest,
    sign_document,
)
from gateway.sync.topics import Topics, check_level, crl_topic

log = logging.getLogger(__name__)
DEFAULT_INLINE_LIMIT = 256 * 1024
CRL_NOTICE = {"type": "portvakt.crl-notice", "format": 1}
ACTIONS = {"unlock": "door.unlock", "lockdown": "site.lockdown", "normal": "site.normal",
           "status": "status.resend"}


# --- broker options ------------------------------------------------------------------------------

def add_broker_options(p: argparse.ArgumentParser, client_id: str | None) -> None:
    g = p.add_argument_group("broker (TLS; the CA is pinned)")
    g.add_argument("--broker", required=True, metavar="HOST:PORT")
    g.add_argument("--ca-file", type=Path, required=True, help="the CA of the broker's certificate")
    g.add_argument("--username", default="hq")
    g.add_argument("--password-file", type=Path,
                   help="file holding the password (mode 0600); never on the command line")
    g.add_argument("--client-cert", type=Path)
    g.add_argument("--client-key", type=Path)
    g.add_argument("--client-id", default=client_id,
                   help="MQTT client id" + (f" (default {client_id})" if client_id else ""))
    g.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    g.add_argument("--prefix", default="portvakt", help="topic prefix (default %(default)s)")


def broker_params(args: argparse.Namespace, *, persistent: bool = False) -> BrokerParams:
    host, sep, port = str(args.broker).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--broker: expected HOST:PORT, got {args.broker!r}")
    password = None
    if args.password_file is not None:
        password = read_secret(args.password_file, "--password-file", "password")
    if (args.client_cert is None) != (args.client_key is None):
        raise InputError("--client-cert and --client-key go together")
    client_id = args.client_id or f"portvakt-cli-{os.getpid()}"
    return BrokerParams(host, int(port), args.ca_file, client_id, args.username, password,
                        args.client_cert, args.client_key, 5 if args.protocol == "5" else 4,
                        persistent=persistent)


def _publish(args: argparse.Namespace, messages: list[tuple[str, bytes, bool]]) -> int:
    from gateway.sync.mqtt import connect

    params = broker_params(args)

    async def go() -> None:
        async with connect(params) as client:
            for topic, payload, retain in messages:
                await client.publish_checked(topic, payload, retain=retain)
                print(f"{topic}: published ({len(payload):,} bytes{', retained' if retain else ''})")

    try:
        asyncio.run(go())
    except BrokerError as e:
        print(f"portvakt: {e}", file=sys.stderr)
        return 1
    return 0


# --- manifests -----------------------------------------------------------------------------------

def add_manifest_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("large content (signed manifest + HTTPS)")
    g.add_argument("--inline-limit", type=int, default=DEFAULT_INLINE_LIMIT,
                   help="larger content goes as a manifest (default %(default)s bytes)")
    g.add_argument("--upload-dir", type=Path, help="folder an HTTPS server serves at --base-url")
    g.add_argument("--base-url", help="https URL of --upload-dir")
    g.add_argument("--manifest-key", type=Path, help="PEM private key that signs manifests")


def _manifest(args: argparse.Namespace, kind: str, scope: str, data: bytes, suffix: str) -> bytes:
    from gateway.cli_policy import private_key

    missing = [o for o, v in (("--upload-dir", args.upload_dir), ("--base-url", args.base_url),
                              ("--manifest-key", args.manifest_key)) if v is None]
    if missing:
        raise InputError(f"{len(data):,} bytes is more than --inline-limit ({args.inline_limit:,}): "
                         f"a manifest is needed, and with it {', '.join(missing)}")
    if not str(args.base_url).lower().startswith("https://"):
        log.warning("--base-url is not https: gateways refuse it unless mqtt.allow_http is set")
    key = private_key(args.manifest_key)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{kind}-{digest}{suffix}"
    target = args.upload_dir / name
    tmp = target.with_name(target.name + ".tmp")
    try:
        args.upload_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as e:
        raise InputError(f"{target}: cannot write: {e.strerror}") from None
    url = f"{str(args.base_url).rstrip('/')}/{name}"
    print(f"{target}: {len(data):,} bytes, SHA-256 {digest[:16]}..., to be served at {url}")
    return sign_document(make_manifest(kind, scope, url, digest, len(data), datetime.now(UTC)),
                         key)


# --- policy publish ------------------------------------------------------------------------------

def _bundle_site(data: bytes, path: Path) -> str:
    """The site a signed bundle is for (read, not verified: every gateway verifies it)."""
    try:
        env = json.loads(data)
        payload = json.loads(base64.b64decode(env["payload"], validate=True))
        site = payload["site"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InputError(f"{path}: not a signed policy bundle (portvakt policy sign writes "
                         f"one)") from None
    if not isinstance(site, str):
        raise InputError(f"{path}: bundle.site is not a string")
    return site


def cmd_policy_publish(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    site = _bundle_site(data, path)
    try:
        topics = [Topics(args.prefix, site, g) for g in args.gateway]
    except ValueError as e:
        raise InputError(f"--gateway: {e}") from None
    payload = data if len(data) <= args.inline_limit else \
        _manifest(args, "policy", site, data, ".json")
    return _publish(args, [(t.policy, payload, True) for t in topics])


def add_policy_publish(ps: Any) -> None:
    """`portvakt policy publish` (registered by gateway/cli_policy.py)."""
    p = ps.add_parser("publish", help="publish a signed bundle to gateways (retained)")
    p.add_argument("file", type=Path, help="the envelope `portvakt policy sign` wrote")
    p.add_argument("--gateway", action="append", required=True,
                   help="gateway id at the bundle's site (repeat for each)")
    add_broker_options(p, None)
    add_manifest_options(p)
    p.set_defaults(func=cmd_policy_publish)


# --- crl publish ---------------------------------------------------------------------------------

def issuer_key_id(der: bytes, path: Path) -> str:
    """Hex of the CRL's authorityKeyIdentifier (the CA's subjectKeyIdentifier)."""
    from cryptography import x509

    try:
        crl = x509.load_der_x509_crl(der)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise InputError(f"{path}: the CRL has no authorityKeyIdentifier; give "
                         f"--issuer-key-id") from None
    except ValueError as e:
        raise InputError(f"{path}: not a CRL: {e}") from None
    if aki.key_identifier is None:
        raise InputError(f"{path}: the CRL's authorityKeyIdentifier has no keyIdentifier; give "
                         f"--issuer-key-id")
    return aki.key_identifier.hex()


def cmd_crl_publish(args: argparse.Namespace) -> int:
    from gateway.sync.crl import to_der

    path: Path = args.file
    try:
        data = to_der(path.read_bytes())
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    kid = args.issuer_key_id or issuer_key_id(data, path)
    try:
        topic = crl_topic(args.prefix, kid)
    except ValueError as e:
        raise InputError(f"--issuer-key-id: {e}") from None
    if args.notice:
        payload = json.dumps(CRL_NOTICE).encode()
    elif len(data) <= args.inline_limit:
        payload = data
    else:
        payload = _manifest(args, "crl", kid, data, ".crl")
    return _publish(args, [(topic, payload, True)])


# --- commands ------------------------------------------------------------------------------------

def cmd_send(args: argparse.Namespace) -> int:
    from gateway.cli_policy import private_key

    key = private_key(args.key)
    try:
        topics = Topics(args.prefix, check_level(args.site, "--site"),
                        check_level(args.gateway, "--gateway"))
    except ValueError as e:
        raise InputError(str(e)) from None
    cmd_args: dict[str, Any] = {}
    if args.action == "unlock":
        if not args.door:
            raise InputError("unlock: --door is required")
        cmd_args["door"] = args.door
        if args.seconds is not None:
            cmd_args["seconds"] = args.seconds
    elif args.door or args.seconds is not None:
        raise InputError(f"{args.action}: --door and --seconds are for unlock only")
    if not 0 < args.ttl <= 86400:
        raise InputError(f"--ttl: expected seconds, 0 < ttl <= 86400, got {args.ttl}")
    from gateway.sync.signed import SignedError

    try:
        doc = make_command(ACTIONS[args.action], cmd_args, site=args.site, gateway=args.gateway,
                           ttl=args.ttl)
    except SignedError as e:
        raise InputError(str(e)) from None
    print(f"command {doc['action']} for {args.site}/{args.gateway}, nonce {doc['nonce']}, "
          f"expires {doc['expires_at']}")
    return _publish(args, [(topics.cmd, sign_document(doc, key), False)])


# --- hq collect ----------------------------------------------------------------------------------

def cmd_collect(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging
    from gateway.sync.hq import Collector, StoreError

    setup_logging(max(args.verbose, 1))
    params = broker_params(args, persistent=True)
    collector = Collector(args.store, params, args.prefix)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(collector.run())

        async def announce() -> None:
            await collector.wait_for(lambda: collector.info.connected, float("inf"))
            print(f"collecting into {args.store} as {params.client_id}", flush=True)

        announcer = asyncio.create_task(announce())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (announcer, stopper, task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t  # re-raises what ended the collector (its store failed)

    try:
        asyncio.run(go())
    except StoreError as e:
        print(f"portvakt: {e}", file=sys.stderr)
        return 2
    i = collector.info
    print(f"stopped: {i.stored} events stored, {i.duplicates} duplicates dropped, "
          f"{i.refused} refused, {i.acks_published} acknowledgements published")
    return 0


# --- registration --------------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="sub", required=True)


def register(sub: Any) -> None:
    """`crl publish` (into the `crl` command of gateway/cli_trust.py), `cmd`, `hq`."""
    crl = sub.choices.get("crl") or sub.add_parser("crl", help="certificate revocation lists")
    cp = _subcommands(crl).add_parser("publish", help="publish a CRL (or a notice of one) to "
                                                      "every gateway (retained)")
    cp.add_argument("file", type=Path, help="the CRL, DER or PEM")
    cp.add_argument("--issuer-key-id", help="topic level (default: the CRL's "
                                            "authorityKeyIdentifier, hex)")
    cp.add_argument("--notice", action="store_true",
                    help="publish only a notice: gateways fetch from their distribution points")
    add_broker_options(cp, None)
    add_manifest_options(cp)
    cp.set_defaults(func=cmd_crl_publish)

    c = sub.add_parser("cmd", help="signed commands to a gateway")
    cs = c.add_subparsers(dest="sub", required=True)
    s = cs.add_parser("send", help="sign and send a command (expiring, single use)")
    s.add_argument("action", choices=sorted(ACTIONS), help="unlock a door for a moment, lock "
                   "the site down, back to normal, or have the gateway resend its status")
    s.add_argument("--site", required=True)
    s.add_argument("--gateway", required=True)
    s.add_argument("--key", type=Path, required=True, help="PEM private key (a pinned command key)")
    s.add_argument("--door")
    s.add_argument("--seconds", type=float)
    s.add_argument("--ttl", type=float, default=60.0,
                   help="seconds the command stays valid (default %(default)s)")
    add_broker_options(s, None)
    s.set_defaults(func=cmd_send)

    h = sub.add_parser("hq", help="head office's tools")
    hs = h.add_subparsers(dest="sub", required=True)
    hc = hs.add_parser("collect", help="store every gateway's events in SQLite and acknowledge "
                                       "them (runs until SIGTERM)")
    hc.add_argument("--store", type=Path, required=True, help="SQLite file")
    add_broker_options(hc, "portvakt-hq-collector")
    hc.set_defaults(func=cmd_collect)

