"""`portvakt card check` and `portvakt card readers`: a technician's reader at the box."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from gateway.access import PROOF_FAILED, check_presentation
from gateway.cli_trust import add_trust_options, build_store
from gateway.config import PIV_AID_HEX, Config
from gateway.control import request
from gateway.daemon import read_from_json
from gateway.domain import CardFailure, CardRead
from gateway.errors import InputError
from gateway.trust.validator import Rejection, verify_proof


async def _one_card(reader_name: str, aids: tuple[bytes, ...], wait_s: float
                    ) -> CardRead | CardFailure | str:
    from gateway.domain import ReaderStatus
    from readers.pcsc import PcscReader, split_name
    from readers.profile import PivCakProfile

    base, slot = split_name(reader_name)
    reader = PcscReader("check", base, slot, PivCakProfile(aids))
    async with reader:
        async def first() -> CardRead | CardFailure | str:
            async for item in reader.presentations():
                if isinstance(item, ReaderStatus):
                    if not item.online and item.detail != "reader not connected":
                        return f"reader {reader_name!r}: {item.detail}"
                    continue
                return item
            return "reader closed"

        try:
            return await asyncio.wait_for(first(), wait_s)
        except TimeoutError:
            return f"no card presented at {reader_name!r} within {wait_s:g} s"


def _via_daemon(cfg: Config, args: argparse.Namespace) -> CardRead | CardFailure | None:
    """The next presentation at the reader, through a running daemon's control API; None when
    no daemon answers (then the reader is free to read directly)."""
    try:
        ans = request(cfg.state_dir / "control.sock",
                      {"id": 1, "cmd": "card.check", "reader": args.reader,
                       "timeout": args.timeout}, timeout=args.timeout + 5)
    except (ConnectionError, OSError):
        return None
    if not ans.get("ok"):
        raise InputError(f"the running daemon: {ans.get('error')}")
    if "failure" in ans:
        f = ans["failure"]
        return CardFailure(args.reader, f["reason"], f["detail"], f["transport"], 0.0)
    return read_from_json(ans["read"])


def cmd_card_check(args: argparse.Namespace) -> int:
    store, cfg, explicit = build_store(args)
    aids = cfg.aids if cfg is not None else (bytes.fromhex(PIV_AID_HEX),)
    from_daemon = _via_daemon(cfg, args) if cfg is not None else None
    via = from_daemon is not None
    got = (from_daemon if from_daemon is not None
           else asyncio.run(_one_card(args.reader, aids, args.timeout)))
    out: dict[str, Any] = {"reader": args.reader, "via_daemon": via}
    if isinstance(got, str):
        raise InputError(got)
    if isinstance(got, CardFailure):
        detail = got.detail
        if "sharing violation" in detail.lower():
            detail += " (another program holds the reader: is the gateway daemon running?)"
        out.update(valid=False, reason=got.reason, detail=detail)
    elif explicit and args.profile is None:
        # Path and proof alone (RFC 5280, revocation, PKI-CAK); profiles reported apart.
        checked = store.check_path(got.certificates, time.time())
        leaf = store.leaf(got.certificates)
        if isinstance(checked, Rejection):
            out.update(valid=False, reason=checked.reason, detail=checked.detail)
        elif leaf is None or not verify_proof(leaf, got.challenge, got.signature, got.scheme):
            out.update(valid=False, reason="proof-failed", detail=PROOF_FAILED)
        else:
            prof = store.match_profile(checked[0].path, None)
            out.update(valid=True, identity=None, revocation=checked[1],
                       profile=None if isinstance(prof, Rejection) else prof.name,
                       aid=got.aid.hex().upper(),
                       ms=round((time.monotonic() - got.detected_at) * 1000, 1))
    else:
        verdict = check_presentation(store, got, time.time())
        if args.profile is not None and not isinstance(verdict, Rejection) and \
                verdict.profile != args.profile:
            verdict = store.validate_der(got.certificates, time.time(), args.profile)
        if isinstance(verdict, Rejection):
            out.update(valid=False, reason=verdict.reason, detail=verdict.detail)
        else:
            out.update(valid=True, identity=verdict.identity.key, profile=verdict.profile,
                       revocation=verdict.revocation, aid=got.aid.hex().upper(),
                       ms=round((time.monotonic() - got.detected_at) * 1000, 1))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if out["valid"] else 1
    if via:
        print(f"(read through the running gateway daemon, which holds {args.reader!r}; the "
              "presentation also counted as a badge at its door)")
    if out["valid"] and out["identity"] is None:
        accepts = (f"profile {out['profile']} would accept it" if out["profile"]
                   else "no configured profile would accept it")
        print(f"{args.reader}: PATH AND PROOF VALID  revocation={out['revocation']}; {accepts} "
              f"(AID {out['aid']}, {out['ms']} ms)")
    elif out["valid"]:
        print(f"{args.reader}: VALID  identity={out['identity']} profile={out['profile']} "
              f"revocation={out['revocation']} (AID {out['aid']}, {out['ms']} ms)")
    else:
        print(f"{args.reader}: REFUSED  {out['reason']}: {out['detail']}")
    return 0 if out["valid"] else 1


def cmd_card_readers(args: argparse.Namespace) -> int:
    from readers.pcsc import list_readers, split_name

    names = list_readers()
    if args.json:
        print(json.dumps([{"pcsc_name": n, "reader": split_name(n)[0], "slot": split_name(n)[1]}
                          for n in names], indent=2))
    elif not names:
        print("no PC/SC readers (is pcscd running?)")
    for name in names if not args.json else ():
        base, slot = split_name(name)
        print(f"{name}\t(reader {base!r}, slot {slot})")
    return 0


def cmd_card_serve(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging
    from readers.virtual.vpcd import run

    setup_logging(args.verbose)
    return run(args.reader_port, args.card, host=args.host)


def _tcp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1..65535, got {text!r}")
    return port


def register(sub: Any) -> None:
    from gateway.cli import OneLineErrors

    cd = sub.add_parser("card", help="cards and readers")
    cds = cd.add_subparsers(dest="sub", required=True, parser_class=OneLineErrors)
    serve = cds.add_parser(
        "serve", help="a virtual PIV card in a vpcd reader slot",
        description="Insert a virtual PIV card (a card file from `portvakt pki demo`) into a vpcd "
                    "reader slot: connecting is inserting. It prints a line once pcscd has "
                    "powered the card on; Ctrl-C or SIGTERM removes it.")
    serve.add_argument("--reader-port", type=_tcp_port, required=True, metavar="PORT",
                       help="the vpcd port of the reader slot (slot 0 of a reader on port N is "
                            "N, slot 1 is N+1; `portvakt rig readers` prints them)")
    serve.add_argument("--card", type=Path, required=True, metavar="CARDFILE",
                       help="a card file (JSON: certificate and key), e.g. cards/alice.card.json")
    serve.add_argument("--host", default="127.0.0.1",
                       help="the host vpcd listens on (default %(default)s)")
    serve.set_defaults(func=cmd_card_serve)
    readers = cds.add_parser("readers", help="list PC/SC readers with their stable names")
    readers.add_argument("--json", action="store_true")
    readers.set_defaults(func=cmd_card_readers)
    check = cds.add_parser("check", help="read one card: PKI-CAK and offline validation")
    check.add_argument("--reader", required=True, help="PC/SC reader name (index optional)")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a card")
    check.add_argument("--json", action="store_true")
    add_trust_options(check)
    check.set_defaults(func=cmd_card_check)
