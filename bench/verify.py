"""Revocation-checked badge decisions: ours beside `openssl verify` and cryptography, one table.

    python -m bench.verify [--sizes 1000,100000,1000000] [--badges N] [--cards N] [--runs K]
                           [--keep DIR]

For each CRL size it writes a demo PKI's issuing-CA CRL (gateway.rig.crlgen), then measures, in
the same run: our ingest, lookup and full decision (gateway.trust, gateway.access); one
`openssl verify -crl_check` per badge (it re-reads the CRL each time, as a tool without an index
must); cryptography's load_der_x509_crl, its signature check and its per-serial lookup.
Decisions are timed twice: the same card again and again (path cache warm), and `--cards`
distinct cards of the issuing CA in turn, each seen once (the CA's chain cached, the card not);
`portvakt verify` over all the distinct cards in one run gives the command line's cost per
certificate (the run minus a one-certificate run, over the extra certificates).
Progress goes to stderr, the table to stdout. See bench/README.md for the columns.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from gateway.domain import CardRead, ProofScheme
from gateway.pki_demo import make_demo_pki
from gateway.rig.crlgen import write_crl
from readers.virtual.cardfile import CardFile, read_card

# Our side is being written: without it the baseline columns still run.
try:
    from gateway.access import check_presentation
    from gateway.trust.revocation import RevocationStore
    from gateway.trust.validator import CredentialProfile, TrustStore
    OURS_MISSING: str | None = None
except ImportError as e:
    OURS_MISSING = f"{type(e).__name__}: {e}"

PIV_CARD_AUTH = "2.16.840.1.101.3.6.8"
MS_PER_NS = 1e-6


# --- our API, in one place so it is easy to adapt --------------------------------------------

def ours_store(directory: Path) -> Any:
    return RevocationStore(directory)


def ours_ingest(store: Any, data: bytes, signer: x509.Certificate) -> Any:
    return store.ingest(data, [signer], now=time.time(), source="bench")


def ours_contains(index: Any, serial: int) -> bool:
    return bool(index.contains(serial))


def ours_trust_store(root: x509.Certificate, issuing: x509.Certificate, store: Any) -> Any:
    return TrustStore.create(anchors=[root], intermediates=[issuing], revocation=store,
                             profiles=[CredentialProfile(name="piv",
                                                         required_eku=frozenset({PIV_CARD_AUTH}))])


def ours_decide(trust: Any, read: CardRead) -> Any:
    return check_presentation(trust, read, time.time())


def card_reads(card: CardFile, n: int) -> list[CardRead]:
    """`n` presentations of `card`, each over a fresh challenge, signed ahead of the timing."""
    leaf = card.certificate_der()
    key = card.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    reads = []
    for _ in range(n):
        challenge = os.urandom(32)
        signature = key.sign(challenge, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        reads.append(CardRead("bench", (leaf,), challenge, signature, ProofScheme.ECDSA_PREHASHED,
                              "bench", b"", 0.0))
    return reads


# --- measuring --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    p50: float  # nanoseconds
    p99: float
    n: int


def dist(samples: Sequence[int]) -> Dist:
    ordered = sorted(samples)
    return Dist(statistics.median(ordered), ordered[math.ceil(0.99 * len(ordered)) - 1], len(ordered))


def time_each(fn: Callable[[Any], object], args: Sequence[Any], *, budget_s: float,
              at_least: int = 20) -> Dist:
    """Time `fn(a)` for each of `args` with perf_counter_ns; stop early once past `budget_s`."""
    gc.collect()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(budget_s * 1e9)
    clock = time.perf_counter_ns
    for a in args:
        t0 = clock()
        fn(a)
        t1 = clock()
        samples.append(t1 - t0)
        if t1 > deadline and len(samples) >= at_least:
            break
    return dist(samples)


def median_ns(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls, after one untimed call (caches, lazy imports)."""
    fn()
    gc.collect()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def run_child(cmd: Sequence[str]) -> tuple[int, int, str]:
    """(wall ns, exit code, output) of one child process."""
    t0 = time.perf_counter_ns()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return time.perf_counter_ns() - t0, out.returncode, out.stdout.decode(errors="replace")


def peak_rss_kib(cmd: Sequence[str]) -> int | None:
    """Peak RSS of `cmd`, by GNU time; None without it.

    Not our own wait4 rusage: Linux carries the forking process's high-water mark across exec,
    so every child of this (large) Python process would seem at least as big as it.
    """
    gnu_time = shutil.which("time")
    if gnu_time is None:
        return None
    with tempfile.NamedTemporaryFile("r") as report:
        subprocess.run([gnu_time, "-f", "%M", "-o", report.name, *cmd], capture_output=True,
                       check=False)
        lines = report.read().split()
    return int(lines[-1]) if lines else None


def vm_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def rss_probe(kind: str, crl: Path, issuing_pem: Path, queries: int = 10_000) -> None:
    """In a fresh process: RSS growth and peak (KiB) of holding one CRL, as JSON on stdout."""
    issuing = x509.load_pem_x509_certificate(issuing_pem.read_bytes())
    rng = random.Random(1)
    probes = [rng.getrandbits(128) for _ in range(queries)]
    gc.collect()
    base = vm_kib("VmRSS")
    data = crl.read_bytes()
    holder: Any
    if kind == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            holder = ours_ingest(ours_store(Path(tmp)), data, issuing)
            del data
            gc.collect()
            for s in probes:  # fault in the pages lookups touch
                ours_contains(holder, s)
            after = vm_kib("VmRSS")
    else:
        holder = x509.load_der_x509_crl(data)
        del data
        gc.collect()
        holder.get_revoked_certificate_by_serial_number(probes[0])
        after = vm_kib("VmRSS")
    print(json.dumps({"held": after - base, "peak": vm_kib("VmHWM") - base}))


def probe(kind: str, crl: Path, issuing_pem: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-m", "bench.verify", "--rss-probe", kind, str(crl),
                          str(issuing_pem)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return int(doc["held"]), int(doc["peak"])


# --- one CRL size -----------------------------------------------------------------------------

@dataclass
class Pki:
    dir: Path
    root: x509.Certificate
    issuing: x509.Certificate
    issuing_key: Any
    good: CardFile  # not on the CRL
    revoked: CardFile  # on the CRL


@dataclass
class Row:
    entries: int
    crl_bytes: int = 0
    gen_ns: float = 0.0
    ours_ingest: float | None = None
    ours_lookup: Dist | None = None
    ours_decision: Dist | None = None
    ours_distinct: Dist | None = None  # each a card never seen before
    cli_per_cert: float | None = None  # portvakt verify, ns per extra certificate
    cli_cards: int = 0
    ours_first_decision: float | None = None
    ours_rss: tuple[int, int] | None = None
    ours_error: str | None = None
    openssl: float = 0.0
    openssl_peak_kib: int | None = None
    crypto_load: float = 0.0
    crypto_sig: float = 0.0
    crypto_lookup: Dist | None = None
    crypto_rss: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def queries_for(serials: Sequence[int], n: int, seed: int) -> list[int]:
    """`n` serials to look up: half on the CRL (anywhere in it), half not, shuffled."""
    rng = random.Random(seed)
    on = set(serials)
    present = [serials[rng.randrange(len(serials))] for _ in range(n // 2)]
    absent: list[int] = []
    while len(absent) < n - len(present):
        s = rng.getrandbits(128)
        if s not in on:
            absent.append(s)
    mixed = present + absent
    rng.shuffle(mixed)
    return mixed


def measure_openssl(pki: Pki, crl: Path, runs: int, row: Row) -> None:
    cmd = ["openssl", "verify", "-crl_check", "-CAfile", str(pki.dir / "root.pem"),
           "-untrusted", str(pki.dir / "issuing.pem"), "-CRLfile", str(crl)]
    # The revoked card first: proves the CRL is really consulted, and warms the page cache.
    _, code, out = run_child([*cmd, str(pki.dir / "revoked.pem")])
    if code == 0 or "revoked" not in out:
        raise RuntimeError(f"openssl verify did not refuse the revoked card: {out.strip()}")
    times = []
    for _ in range(runs):
        ns, code, out = run_child([*cmd, str(pki.dir / "good.pem")])
        if code != 0:
            raise RuntimeError(f"openssl verify refused the good card: {out.strip()}")
        times.append(ns)
    row.openssl = statistics.median(times)
    row.openssl_peak_kib = peak_rss_kib([*cmd, str(pki.dir / "good.pem")])


def measure_cryptography(pki: Pki, data: bytes, queries: list[int], runs: int, row: Row) -> None:
    row.crypto_load = median_ns(lambda: x509.load_der_x509_crl(data), runs)
    crl = x509.load_der_x509_crl(data)
    public_key = pki.issuing.public_key()
    row.crypto_sig = median_ns(lambda: crl.is_signature_valid(public_key),  # type: ignore[arg-type]
                               max(1, runs // 2))
    # A linear scan: at a million entries each lookup takes a good fraction of a second.
    row.crypto_lookup = time_each(crl.get_revoked_certificate_by_serial_number, queries[:2000],
                                  budget_s=10.0)


def distinct_cards(pki: Pki, n: int, folder: Path) -> tuple[list[CardRead], list[Path]]:
    """`n` new cards of the issuing CA, made like the demo's (EC P-256, PIV card-auth EKU, UPN),
    one presentation each, signed ahead of the timing; and their certificates as PEM files."""
    import datetime as dt

    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from gateway.trust.identity import UPN_OID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    reads, files = [], []
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.issuing.public_key())  # type: ignore[arg-type]
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        upn = f"card{i}@demo.example".encode()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Card {i}")]))
                .issuer_name(pki.issuing.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=730))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                             False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(PIV_CARD_AUTH),
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.OtherName(
                    UPN_OID, bytes([0xA0, len(upn) + 2, 0x0C, len(upn)]) + upn)]), critical=False)
                .add_extension(aki, critical=False)
                .sign(pki.issuing_key, hashes.SHA256()))
        challenge = os.urandom(32)
        signature = key.sign(challenge, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        reads.append(CardRead("bench", (cert.public_bytes(serialization.Encoding.DER),), challenge,
                              signature, ProofScheme.ECDSA_PREHASHED, "bench", b"", 0.0))
        f = folder / f"card{i}.pem"
        f.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.append(f)
    return reads, files


def measure_cli(pki: Pki, crl: Path, files: list[Path], runs: int, row: Row) -> None:
    """`portvakt verify` per certificate: (all cards - one card) / (cards - 1), medians."""
    cmd = [sys.executable, "-m", "gateway.cli", "verify", "--trust-anchor", str(pki.dir / "root.pem"),
           "--intermediate", str(pki.dir / "issuing.pem"), "--crl", str(crl),
           "--crl", str(pki.dir / "root.crl")]
    one, many = [], []
    for _ in range(max(2, runs // 2)):
        ns, code, out = run_child([*cmd, str(files[0])])
        if code != 0:
            raise RuntimeError(f"portvakt verify refused a good card: {out.strip()[-500:]}")
        one.append(ns)
        ns, code, out = run_child([*cmd, *map(str, files)])
        if code != 0:
            raise RuntimeError(f"portvakt verify refused a good card: {out.strip()[-500:]}")
        many.append(ns)
    row.cli_cards = len(files)
    row.cli_per_cert = (statistics.median(many) - statistics.median(one)) / (len(files) - 1)


def measure_ours(pki: Pki, data: bytes, queries: list[int], badges: int, runs: int, work: Path,
                 row: Row, cards: int = 0) -> None:
    stores = iter(range(runs + 2))  # a fresh store per call: re-ingesting the same CRL is a no-op
    row.ours_ingest = median_ns(
        lambda: ours_ingest(ours_store(work / f"ingest-{row.entries}-{next(stores)}"), data,
                            pki.issuing), runs)
    store = ours_store(work / f"store-{row.entries}")
    index = ours_ingest(store, data, pki.issuing)
    # The validator checks the issuing CA too: it needs the root's (small) CRL as well.
    ours_ingest(store, (pki.dir / "root.crl").read_bytes(), pki.root)
    row.ours_lookup = time_each(lambda s: ours_contains(index, s), queries, budget_s=5.0)
    trust = ours_trust_store(pki.root, pki.issuing, store)
    refused = ours_decide(trust, card_reads(pki.revoked, 1)[0])
    if getattr(refused, "reason", None) != "revoked":
        raise RuntimeError(f"the revoked card was not refused as revoked: {refused!r}")
    reads = card_reads(pki.good, badges + 1)
    t0 = time.perf_counter_ns()
    first = ours_decide(trust, reads[0])
    row.ours_first_decision = time.perf_counter_ns() - t0
    if getattr(first, "revocation", None) != "good":
        raise RuntimeError(f"the good card was not accepted with a good revocation status: {first!r}")
    row.ours_decision = time_each(lambda r: ours_decide(trust, r), reads[1:], budget_s=30.0)
    if cards:
        distinct, files = distinct_cards(pki, cards, work / f"cards-{row.entries}")
        verdicts: list[Any] = []
        row.ours_distinct = time_each(lambda r: verdicts.append(ours_decide(trust, r)), distinct,
                                      budget_s=120.0)
        bad = [v for v in verdicts if getattr(v, "revocation", None) != "good"]
        if bad:
            raise RuntimeError(f"{len(bad)} new cards were not accepted: {bad[0]!r}")
        say("  portvakt verify over the new cards ...")
        measure_cli(pki, pki.dir / f"issuing-{row.entries}.crl", files, runs, row)


def measure(pki: Pki, entries: int, badges: int, runs: int, work: Path, cards: int = 0) -> Row:
    row = Row(entries)
    crl = pki.dir / f"issuing-{entries}.crl"
    t0 = time.perf_counter_ns()
    serials = write_crl(crl, pki.issuing, pki.issuing_key, entries, seed=entries,
                        include=[pki.revoked.certificate.serial_number])
    row.gen_ns = time.perf_counter_ns() - t0
    data = crl.read_bytes()
    row.crl_bytes = len(data)
    say(f"{entries:,} entries: CRL written in {fmt_ns(row.gen_ns)}, {len(data) / 2**20:.1f} MiB")
    queries = queries_for(serials, 20_000, seed=entries)

    say("  openssl verify ...")
    measure_openssl(pki, crl, runs, row)
    say("  cryptography ...")
    measure_cryptography(pki, data, queries, runs, row)
    row.crypto_rss = probe("cryptography", crl, pki.dir / "issuing.pem")
    if OURS_MISSING is None:
        say("  ours ...")
        try:
            measure_ours(pki, data, queries, badges, runs, work, row, cards)
            row.ours_rss = probe("ours", crl, pki.dir / "issuing.pem")
        except Exception as e:  # the API is in flux: report, keep the baseline columns
            row.ours_error = f"{type(e).__name__}: {e}"
            say("".join(traceback.format_exception(e)[-3:]))
    return row


def make_pki(directory: Path) -> Pki:
    demo = make_demo_pki(directory)
    root = x509.load_pem_x509_certificate(demo.root.read_bytes())
    issuing = x509.load_pem_x509_certificate(demo.issuing.read_bytes())
    key = serialization.load_pem_private_key((directory / "issuing.key").read_bytes(), password=None)
    good, revoked = read_card(demo.cards["alice"]), read_card(demo.cards["bob"])
    for name, card in (("good", good), ("revoked", revoked)):
        (directory / f"{name}.pem").write_bytes(card.certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(directory, root, issuing, key, good, revoked)


# --- the table --------------------------------------------------------------------------------

def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            v = ns / scale
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{ns:.0f}ns"


def fmt_dist(d: Dist | None) -> str:
    return "n/a" if d is None else f"{fmt_ns(d.p50)} / {fmt_ns(d.p99)}"


def fmt_mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def table(rows: Sequence[Row]) -> str:
    groups = [("", ["entries", "CRL MiB"]),
              ("ours", ["ingest", "lookup p50/p99", "same card p50/p99", "new card p50/p99",
                        "CLI per cert", "RSS/peak MiB"]),
              ("openssl verify -crl_check", ["per badge", "peak MiB"]),
              ("cryptography", ["load", "sig check", "lookup p50/p99", "RSS/peak MiB"]),
              ("", ["openssl / ours", "openssl / CLI"])]
    body = []
    for r in rows:
        ratio = (f"{r.openssl / r.ours_decision.p50:,.0f}x" if r.ours_decision else "n/a")
        cli_ratio = (f"{r.openssl / r.cli_per_cert:,.0f}x" if r.cli_per_cert else "n/a")
        body.append([
            f"{r.entries:,}", f"{r.crl_bytes / 2**20:.3g}",
            fmt_ns(r.ours_ingest), fmt_dist(r.ours_lookup), fmt_dist(r.ours_decision),
            fmt_dist(r.ours_distinct), fmt_ns(r.cli_per_cert),
            "n/a" if r.ours_rss is None else f"{fmt_mib(r.ours_rss[0])} / {fmt_mib(r.ours_rss[1])}",
            fmt_ns(r.openssl), fmt_mib(r.openssl_peak_kib),
            fmt_ns(r.crypto_load), fmt_ns(r.crypto_sig), fmt_dist(r.crypto_lookup),
            "n/a" if r.crypto_rss is None else f"{fmt_mib(r.crypto_rss[0])} / {fmt_mib(r.crypto_rss[1])}",
            ratio, cli_ratio,
        ])
    headers = [h for _, cols in groups for h in cols]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    sep = " | "
    group_cells, line_cells, i = [], [], 0
    for name, cols in groups:
        w = sum(widths[i:i + len(cols)]) + 2 * (len(cols) - 1)
        group_cells.append(name.center(w, "-") if name else " " * w)
        i += len(cols)

    def joined(cells: Sequence[str]) -> str:
        out, i = [], 0
        for _, cols in groups:
            out.append("  ".join(c.rjust(widths[i + j]) for j, c in enumerate(cells[i:i + len(cols)])))
            i += len(cols)
        return sep.join(out)

    line_cells = [joined(headers), *(joined(b) for b in body)]
    return "\n".join([sep.join(group_cells), *line_cells])


def environment() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend
    cli = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True).stdout.strip()
    return (f"env: {os.cpu_count()} CPUs, Python {platform.python_version()}, cryptography "
            f"{cryptography.__version__} ({backend.openssl_version_text()}), openssl CLI: {cli}")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1000000",
                    help="CRL entry counts, comma-separated (default %(default)s)")
    ap.add_argument("--badges", type=int, default=1000, help="decisions timed per size")
    ap.add_argument("--cards", type=int, default=2000,
                    help="distinct new cards badged in turn per size (0: skip)")
    ap.add_argument("--runs", type=int, default=5,
                    help="runs of each whole-CRL step (openssl verify, load, ingest); median")
    ap.add_argument("--keep", type=Path, help="write the PKI and CRLs here and keep them")
    ap.add_argument("--rss-probe", nargs=3, metavar=("KIND", "CRL", "ISSUING_PEM"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_probe:
        kind, crl, issuing = args.rss_probe
        rss_probe(kind, Path(crl), Path(issuing))
        return 0
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    env = environment()
    say(env)
    if OURS_MISSING is not None:
        say(f"ours: not measured, gateway.trust/gateway.access do not import: {OURS_MISSING}")
    with tempfile.TemporaryDirectory(prefix="portvakt-bench-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        pki = make_pki(base / "pki")
        bare = statistics.median(run_child(
            ["openssl", "verify", "-CAfile", str(pki.dir / "root.pem"), "-untrusted",
             str(pki.dir / "issuing.pem"), str(pki.dir / "good.pem")])[0] for _ in range(args.runs))
        rows = [measure(pki, n, args.badges, args.runs, base, args.cards) for n in sizes]

    print(env)
    print(table(rows))
    print(f"openssl: median of {args.runs} runs per size, good card; without -crl_check (process "
          f"start, chain) it takes {fmt_ns(bare)}. Lookups: half revoked serials, half not. "
          "Decisions: the same good card, fresh challenges; new card: each of --cards distinct "
          "cards once (the issuing CA's chain cached). CLI per cert: portvakt verify over all "
          "the new cards minus a one-card run, per extra card.")
    for r in rows:
        extra = [f"CRL generated in {fmt_ns(r.gen_ns)}",
                 f"cryptography lookups timed: {r.crypto_lookup.n if r.crypto_lookup else 0}"]
        if r.ours_first_decision is not None:
            extra.append(f"ours: first decision after ingest {fmt_ns(r.ours_first_decision)}")
        if r.ours_error:
            extra.append(f"ours failed: {r.ours_error}")
        print(f"{r.entries:,}: " + "; ".join(extra))
    if OURS_MISSING is not None:
        print(f"ours: not measured ({OURS_MISSING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
