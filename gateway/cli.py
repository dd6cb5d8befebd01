"""`portvakt`: the one entry point. Exit 0 ok, 1 a negative verdict or failed check, 2 bad usage
or bad input; every error names the file, key or field at fault."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NoReturn

from gateway.errors import ConfigError, PortvaktError

log = logging.getLogger("portvakt")
TEMPLATES = ("example.toml", "demo.toml")
# `config init` also writes the site's own file, where every command looks by default
# (DEFAULT_CONFIG, /etc/portvakt/portvakt.toml): a copy of example.toml to edit.
SITE_CONFIG = ("portvakt.toml", "example.toml")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"t": record.created, "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class OneLineErrors(argparse.ArgumentParser):
    """A subcommand parser whose usage errors are one line on stderr (exit 2), naming the
    option at fault and pointing at --help, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        # Refused here, not by the top-level parser: that one would print its usage block.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def setup_logging(verbose: int, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else
                        logging.INFO if verbose else logging.WARNING, handlers=[handler])
    for noisy in ("pymodbus", "asyncio", "nfc"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)


def template_dir() -> Path:
    """The configuration templates: inside the wheel, or config/ in a source checkout."""
    packaged = resources.files("gateway") / "_templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "config"


# --- subcommands -----------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.daemon import run_daemon  # imports nfcpy, which sets its logger's level

    setup_logging(max(args.verbose, 1), args.log_format)
    config = load_config(args.config, args.state_dir)
    return asyncio.run(run_daemon(config, args.state_dir))


def cmd_config_init(args: argparse.Namespace) -> int:
    out: Path = args.dir
    out.mkdir(parents=True, exist_ok=True)
    src = template_dir()
    for name, template in (SITE_CONFIG, *((t, t) for t in TEMPLATES)):
        target = out / name
        if target.exists() and not args.force:
            print(f"{target}: exists, kept (use --force to overwrite)")
            continue
        shutil.copy(src / template, target)
        print(f"{target}: written" + (f" (from {template}: edit it)" if name != template else ""))
    return 0


def cmd_pki_demo(args: argparse.Namespace) -> int:
    from cryptography import x509

    from gateway.pki_demo import CARD_ROLES, guarded_files, make_demo_pki
    from gateway.trust.identity import extract_identity

    existing = guarded_files(args.dir)
    if existing and not args.force:
        what = "a private key" if existing[0].name.endswith((".key", ".card.json")) else "a CA"
        print(f"portvakt pki demo: {existing[0]} exists ({what}): refusing to overwrite it "
              "(--force replaces the whole demo PKI)", file=sys.stderr)
        return 2
    if args.dir.exists() and not args.dir.is_dir():
        print(f"portvakt pki demo: {args.dir} exists and is not a folder", file=sys.stderr)
        return 2
    try:
        pki = make_demo_pki(args.dir)
    except OSError as e:
        print(f"portvakt pki demo: cannot write {e.filename or args.dir}: {e.strerror}",
              file=sys.stderr)
        return 2
    print(f"root CA         {pki.root}\nissuing CA      {pki.issuing}\nCRL             {pki.crl}")
    for name, path in pki.cards.items():
        cert = x509.load_pem_x509_certificate(pki.certificates[name].read_bytes())
        # The key a policy names the holder by, as a profile with `identity = "upn"` reads it.
        identity = extract_identity(cert, "upn") or "(no upn)"
        print(f"card {name:<10} {path}  identity {identity}  certificate "
              f"{pki.certificates[name]}  ({CARD_ROLES.get(name, '')})")
    return 0


def cmd_board_serve(args: argparse.Namespace) -> int:
    from door_drivers.simulator import run as run_board

    return run_board(args, prog="portvakt board serve")


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(keep=args.keep, dashboard=False if args.no_dashboard else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portvakt", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument("--state-dir", type=Path, help="overrides [gateway] state_dir")
    r.add_argument("--log-format", choices=("text", "json"), default="text")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="configuration templates")
    cs = c.add_subparsers(dest="sub", required=True)
    ci = cs.add_parser("init", help="write portvakt.toml (a copy of example.toml to edit) and the "
                                    "templates example.toml and demo.toml into DIR; keeps existing files")
    ci.add_argument("dir", type=Path, help="e.g. /etc/portvakt, where every command looks for portvakt.toml")
    ci.add_argument("--force", action="store_true",
                    help="overwrite existing files, portvakt.toml included")
    ci.set_defaults(func=cmd_config_init)

    k = sub.add_parser("pki", help="demo PKI")
    ks = k.add_subparsers(dest="sub", required=True, parser_class=OneLineErrors)
    kd = ks.add_parser(
        "demo", help="write a demo root CA, issuing CA, CRL and cards into DIR",
        description="Write a demo PKI into DIR: root.pem/root.key, issuing.pem/issuing.key, "
                    "issuing.crl and root.crl, and for each card (alice, bob revoked, carol a "
                    "phone, dave expired, mallory a copied certificate) cards/NAME.card.json "
                    "(for `portvakt card serve` / `phone serve`) and cards/NAME.cert.pem. "
                    "Prints each card's identity key, as a policy names its holder. Refuses to "
                    "overwrite an existing CA or private key (exit 2) unless --force.")
    kd.add_argument("dir", type=Path, metavar="DIR", help="folder to write into (created)")
    kd.add_argument("--force", action="store_true",
                    help="replace an existing demo PKI in DIR (its CA and card keys are lost)")
    kd.set_defaults(func=cmd_pki_demo)

    from gateway.cli_card import register as register_card

    register_card(sub)

    from readers.virtual.phone import add_cli as register_phone

    register_phone(sub)

    from door_drivers.simulator import add_arguments as board_arguments

    b = sub.add_parser("board", help="relay boards")
    bs = b.add_subparsers(dest="sub", required=True, parser_class=OneLineErrors)
    bserve = bs.add_parser(
        "serve", help="a simulated Modbus relay board (until Ctrl-C or SIGTERM)",
        description="A simulated Modbus relay board for a bench without hardware: coils are the "
                    "relays, discrete inputs the terminals (0-based). It prints one line when it "
                    "serves, then one per coil write; Ctrl-C or SIGTERM stops it. Exit 0 when "
                    "stopped, 1 when it cannot serve (port taken), 2 on a bad option.")
    board_arguments(bserve, show_writes=True)
    bserve.set_defaults(func=cmd_board_serve)

    from gateway.cli_rig import register as register_rig

    register_rig(sub)

    from gateway.doctor import register as register_doctor

    register_doctor(sub)

    from gateway.cli_door import register as register_door

    register_door(sub)

    from gateway.cli_tui import register as register_tui

    register_tui(sub)

    from gateway.cli_trust import register as register_trust

    register_trust(sub)

    from gateway.cli_policy import register as register_policy

    register_policy(sub)

    from gateway.cli_print import register as register_print

    register_print(sub)

    from gateway.cli_sync import register as register_sync

    register_sync(sub)

    d = sub.add_parser("demo", help="run the demo: rig, daemon, virtual cards")
    d.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    d.add_argument("--no-dashboard", action="store_true",
                   help="print the timeline only, even in a terminal")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"portvakt: configuration error: {e}", file=sys.stderr)
        return 2
    except PortvaktError as e:
        print(f"portvakt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
