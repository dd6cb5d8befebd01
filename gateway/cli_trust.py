"""`portvakt verify`, `portvakt crl import`, `portvakt crl list`: the technician's answers to
"why was this card refused?" and "how old are our CRLs?"."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import (
    DEFAULT_CONFIG,
    STANCES,
    Config,
    Stance,
    TrustConfig,
    add_config_options,
    load_config,
)
from gateway.errors import InputError, TrustError
from gateway.trust.judge import judge
from gateway.trust.material import read_chain_der
from gateway.trust.revocation import crl_status, iso_time
from gateway.trust.store import ingest_file, load_trust_store
from gateway.trust.validator import Rejection, TrustStore


def add_trust_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--trust-anchor", type=Path, action="append", default=[],
                   help="trust anchor (PEM/DER); with it, the configured store is not used")
    p.add_argument("--intermediate", type=Path, action="append", default=[])
    p.add_argument("--crl", type=Path, action="append", default=[])
    p.add_argument("--profile", help="apply this configured credential profile")


def parse_at(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise InputError(f"--at: expected an ISO-8601 time, got {text!r}") from e
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _config(args: argparse.Namespace, required: bool) -> Config | None:
    path = args.config or DEFAULT_CONFIG
    if args.config is None and not path.exists() and not required:
        return None
    return load_config(path, args.state_dir)


def build_store(args: argparse.Namespace,
                warnings: list[str] | None = None) -> tuple[TrustStore, Config | None, bool]:
    """(store, configuration if any, whether the store is the explicit command-line one).

    A CRL that fails its checks is set aside: `warnings` gets why, the store goes on without it."""
    explicit = bool(args.trust_anchor)
    cfg = _config(args, required=not explicit)
    if explicit:
        profiles = cfg.trust.profiles if cfg else ()
        tc = TrustConfig(tuple(args.trust_anchor), tuple(args.intermediate), tuple(args.crl),
                         profiles, 300.0, 0.0, "deny", "deny", "deny")
        return load_trust_store(tc, None, warnings=warnings), cfg, True
    assert cfg is not None
    store = load_trust_store(cfg.trust, cfg.state_dir / "crl", warnings=warnings)
    for extra in args.crl:
        try:
            ingest_file(store, extra)
        except TrustError as e:
            if warnings is not None:
                warnings.append(f"CRL set aside: {e}" if str(extra) in str(e)
                                else f"CRL set aside: {extra}: {e}")
    return store, cfg, False


def verify_stance(args: argparse.Namespace, cfg: Config | None) -> Stance:
    """The configured stance (deny when there is no configuration), as the options relax it."""
    base = (Stance(cfg.trust.revocation_unknown, cfg.trust.crl_stale, cfg.trust.clock_behind)
            if cfg is not None else Stance())
    return Stance(args.revocation_unknown or base.revocation_unknown,
                  args.crl_stale or base.crl_stale, args.clock_behind or base.clock_behind)


def cmd_verify(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    store, cfg, explicit = build_store(args, warnings)
    for w in warnings:
        print(f"portvakt: warning: {w}", file=sys.stderr)
    stance = verify_stance(args, cfg)
    at = parse_at(args.at)
    path_only = explicit and args.profile is None
    results: list[dict[str, Any]] = []
    for path in args.cert:
        ders = read_chain_der(path)
        v = judge(store, ders, at, stance, args.profile, path_only=path_only)
        leaf = store.leaf(ders)  # from the path cache judge filled
        r: dict[str, Any] = {"file": str(path),
                             "subject": leaf.subject.rfc4514_string() if leaf else None}
        r.update(valid=v.accepted)
        if not v.accepted:
            r.update(reason=v.reason, detail=v.detail, position=v.position)
        if v.revocation is not None:
            r.update(revocation=v.revocation, crl_age_s=v.crl_age, clock_behind=v.clock_behind)
        if v.alarms:
            r["alarms"] = list(v.alarms)
        if path_only and v.path:
            prof = store.match_profile(v.path, None)
            if isinstance(prof, Rejection):
                r["profile"] = {"accepted": False, "detail": prof.detail}
            else:
                full = store.validate_der(ders, at, prof.name)
                r["profile"] = {"accepted": True, "name": prof.name,
                                "identity": getattr(getattr(full, "identity", None), "key", None)}
        elif v.accepted:
            r.update(identity=v.identity, profile=v.profile)
        if warnings:
            r["warnings"] = warnings
        results.append(r)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(_verify_line(r))
    return 0 if all(r["valid"] for r in results) else 1


def _verify_line(r: dict[str, Any]) -> str:
    if not r["valid"]:
        pos = r.get("position")
        where = ("" if pos is None else " (the presented certificate)" if pos == 0
                 else f" (certificate {pos} up the path)")
        return f"{r['file']}: INVALID  {r['reason']}: {r['detail']}{where}"
    rev = r["revocation"] + (f", {r['crl_age_s'] / 3600:.1f} h past nextUpdate"
                             if r.get("crl_age_s") else "")
    alarms = f"  ALARMS {','.join(r['alarms'])}" if r.get("alarms") else ""
    if isinstance(r.get("profile"), dict):
        p = r["profile"]
        prof = (f"profile {p['name']} would accept it (identity {p['identity']})" if p["accepted"]
                else f"no configured profile would accept it: {p['detail']}")
        return f"{r['file']}: path valid  revocation={rev}{alarms}; {prof}"
    return (f"{r['file']}: valid  identity={r['identity']} profile={r['profile']} "
            f"revocation={rev}{alarms}"
            + ("  CLOCK BEHIND trusted time" if r.get("clock_behind") else ""))


def _progress(label: str) -> Any:
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done / 1e6:6.1f}/{total / 1e6:.1f} MB {time.monotonic() - started:5.1f}s")
        sys.stderr.flush()

    return show


def _import_through_daemon(cfg: Config, files: list[Path]) -> int | None:
    """With a daemon running, it installs the CRLs itself (its index in memory is the one that
    decides, and it journals each with the caller); None when no daemon answers."""
    from gateway.control import request

    sock = cfg.state_dir / "control.sock"
    worst = 0
    for i, path in enumerate(files):
        try:
            answer = request(sock, {"id": i, "cmd": "crl.import", "path": str(path.resolve())},
                             300.0)
        except PermissionError:
            raise InputError(f"{sock}: permission denied (join the daemon's group)") from None
        except (ConnectionError, OSError):
            if i == 0:
                return None
            raise InputError(f"{sock}: the daemon went away") from None
        if answer.get("ok"):
            c = answer["crl"]
            print(f"{path}: in use (by the running daemon): {c['issuer']}, number {c['number']}, "
                  f"{c['entries']:,} entries, thisUpdate {c['this_update']}, nextUpdate "
                  f"{c['next_update']}")
        else:
            print(f"{path}: REFUSED: {answer.get('error')}")
            worst = max(worst, 2 if "cannot read" in str(answer.get("error")) else 1)
    return worst


def cmd_crl_import(args: argparse.Namespace) -> int:
    cfg = _config(args, required=True)
    assert cfg is not None
    through = _import_through_daemon(cfg, list(args.file))
    if through is not None:
        return through
    store = load_trust_store(cfg.trust, cfg.state_dir / "crl")
    worst = 0
    for path in args.file:
        t0 = time.monotonic()
        try:
            idx = ingest_file(store, path, progress=_progress(str(path)))
        except TrustError as e:
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            print(f"{path}: REFUSED: {e}")
            worst = max(worst, 1)
            continue
        except InputError as e:
            print(f"{path}: unreadable: {e}", file=sys.stderr)
            worst = 2
            continue
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"{path}: in use: {idx.issuer_text}, number {idx.number}, {idx.count:,} entries, "
              f"thisUpdate {iso_time(idx.this_update)}, nextUpdate {iso_time(idx.next_update)} "
              f"({time.monotonic() - t0:.2f} s)")
    return worst


def cmd_crl_list(args: argparse.Namespace) -> int:
    cfg = _config(args, required=True)
    assert cfg is not None
    store = load_trust_store(cfg.trust, cfg.state_dir / "crl")
    now = time.time()
    rows = [crl_status(i, now, cfg.trust.crl_grace) for i in store.revocation.all()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no CRLs installed")
        return 0
    for r in rows:
        nxt = r["until_next_update_s"]
        due = "no nextUpdate" if nxt is None else (
            f"next due in {nxt / 3600:.1f} h" if nxt >= 0 else f"OVERDUE by {-nxt / 3600:.1f} h")
        print(f"{r['state']:<8} {r['issuer']}  #{r['number']}  {r['entries']:,} entries  "
              f"age {r['age_s'] / 3600:.1f} h  {due}")
    return 1 if any(r["state"] == "stale" for r in rows) else 0


def register(sub: Any) -> None:
    v = sub.add_parser("verify", help="validate certificates offline (why was a card refused?)")
    add_trust_options(v)
    v.add_argument("--at", help="validation time, ISO-8601 (default now)")
    for key in ("revocation-unknown", "crl-stale", "clock-behind"):
        v.add_argument(f"--{key}", choices=STANCES, help=f"the stance on {key.replace('-', ' ')} "
                       "(default: the configured one, else deny)")
    v.add_argument("--json", action="store_true")
    v.add_argument("cert", type=Path, nargs="+")
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser("crl", help="certificate revocation lists")
    cs = c.add_subparsers(dest="sub", required=True)
    ci = cs.add_parser("import", help="verify CRL files and install them in the gateway's store")
    add_config_options(ci)
    ci.add_argument("file", type=Path, nargs="+")
    ci.set_defaults(func=cmd_crl_import)
    cl = cs.add_parser("list", help="installed CRLs with their age and freshness")
    add_config_options(cl)
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_crl_list)

