"""The commands a bench site is built with: `portvakt board serve`, `rig readers`, `card serve`,
`pki demo`. Each runs as a user runs it (its own process, real pcscd + vpcd, the pymodbus
board, mbpoll); bad usage is one line on stderr naming the option, exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli import main
from gateway.rig.proc import RigProcess, free_port, port_free, wait_until
from gateway.trust.identity import extract_identity
from readers.virtual.cardfile import read_card
from tests.fixtures_board import mbpoll_fails, mbpoll_read, mbpoll_write_coil


def portvakt(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def started(tmp_path: Path, name: str, *argv: str) -> RigProcess:
    """`portvakt ARGV` in the background, stdout and stderr in tmp_path/NAME.log."""
    return RigProcess(name, [sys.executable, "-m", "gateway.cli", *argv], tmp_path / f"{name}.log")


def output(proc: RigProcess) -> str:
    return proc.log.read_text(errors="replace")


def wait_output(proc: RigProcess, text: str, timeout: float = 15) -> None:
    wait_until(lambda: text in output(proc), timeout, repr(text), proc)


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """`portvakt ARGV` through `gateway.cli.main` in this process (for refusals: no start-up
    cost), as a CompletedProcess."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's way out
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["portvakt", *argv], code, out, err)


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in named:
        assert text in lines[0], lines[0]


# --- portvakt board serve ----------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "named"), [
    (["--port", "70000"], ["--port", "1..65535", "'70000'"]),
    (["--port", "0"], ["--port", "1..65535"]),
    (["--port", "modbus"], ["--port", "'modbus'"]),
    (["--port", "1502", "--unit", "248"], ["--unit", "1..247"]),
    (["--port", "1502", "--coils", "0"], ["--coils", "1..2000"]),
    (["--port", "1502", "--inputs", "2001"], ["--inputs", "1..2000"]),
    (["--port", "1502", "--serial", "/dev/ttyS0"], ["--serial", "--port"]),
    (["--port", "1502", "--control", "/tmp/" + "x" * 120], ["--control", "107 bytes"]),
    ([], ["--port", "--serial", "required"]),
    (["--", "--port", "1502"], ["required"]),  # after `--` nothing is an option
    (["--port", "1502", "--colour"], ["--colour"]),
])
def test_board_serve_refuses_a_bad_option_in_one_line_naming_it(capsys, argv, named):
    result = in_process(capsys, "board", "serve", *argv)

    assert_one_line_usage_error(result, *named)
    assert "portvakt board serve --help" in result.stderr


def test_board_serve_help_names_every_option(capsys):
    result = in_process(capsys, "board", "serve", "--help")

    assert result.returncode == 0
    for option in ("--host", "--port", "--serial", "--baud", "--unit", "--coils", "--inputs",
                   "--write-log", "--control", "--no-timers", "--show-writes"):
        assert option in result.stdout


def test_board_serve_takes_its_options_and_serves_until_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "writes.jsonl"
    board = started(tmp_path, "board", "board", "serve", "--host", "127.0.0.1", "--port",
                    str(port), "--unit", "7", "--coils", "4", "--inputs", "3", "--write-log",
                    str(log), "--control", str(tmp_path / "control.sock"))
    try:
        wait_output(board, "relay board ready")
        assert (f"relay board ready: Modbus TCP on 127.0.0.1:{port}, unit 7, 4 coils, 3 inputs, "
                f"write log {log}") in output(board)

        mbpoll_write_coil(port, 2, True, unit=7)
        wait_output(board, "coil 2 on")  # the board's terminal shows each write

        assert mbpoll_read(port, "coils", 4, unit=7) == [0, 0, 1, 0]
        assert mbpoll_read(port, "inputs", 3, unit=7) == [0, 0, 0]
        assert "Illegal data address" in mbpoll_fails(port, "-t", "0", "-r", "0", "-c", "5",
                                                      unit=7)
        assert [(w["coil"], w["value"]) for w in map(json.loads, log.read_text().splitlines())
                ] == [(2, True)]
        assert (tmp_path / "control.sock").exists()
    finally:
        board.kill(signal.SIGTERM)
    assert board.popen.returncode == 0, output(board)
    board.stop()
    assert not (tmp_path / "control.sock").exists()


def test_board_serve_on_a_taken_port_says_so_in_one_line_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = portvakt("board", "serve", "--port", str(port))

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_board_serve_with_an_unwritable_write_log_exits_2_naming_the_option(tmp_path):
    result = portvakt("board", "serve", "--port", str(free_port()), "--write-log",
                      str(tmp_path / "missing" / "writes.jsonl"))

    assert_one_line_usage_error(result, "--write-log", "missing/writes.jsonl")


# --- portvakt card serve -----------------------------------------------------------------------

def test_card_serve_help_explains_the_reader_port(capsys):
    result = in_process(capsys, "card", "serve", "--help")

    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--reader-port PORT the vpcd port of the reader slot" in help_text
    assert "portvakt rig readers" in help_text
    assert "--card CARDFILE" in help_text


@pytest.mark.parametrize("port", ["0", "65536", "vpcd"])
def test_card_serve_refuses_a_bad_reader_port_in_one_line(capsys, tmp_path, port):
    result = in_process(capsys, "card", "serve", "--reader-port", port, "--card",
                        str(tmp_path / "alice.card.json"))

    assert_one_line_usage_error(result, "--reader-port", "1..65535", repr(port))


def test_card_serve_says_when_pcscd_has_powered_the_card_on(pcsc_rig, demo_pki):
    card = pcsc_rig.insert("Door1", demo_pki.cards["alice"])

    wait_output(card, "card alice inserted")
    pcsc_rig.wait_slot("Door1", True)
    port = pcsc_rig.readers["Door1"]
    assert output(card).splitlines() == [
        f"card alice inserted: in the vpcd reader slot at 127.0.0.1:{port}, powered on by "
        "pcscd (Ctrl-C removes it)"]


# --- portvakt rig readers ----------------------------------------------------------------------

def free_ports(n: int) -> int:
    """A port N such that N .. N+n-1 are all free (vpcd takes two per reader)."""
    for _ in range(100):
        first = free_port()
        if first + n <= 65536 and all(port_free(p) for p in range(first, first + n)):
            return first
    raise RuntimeError(f"no {n} adjacent free ports")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("argv", "named"), [
    (["front", "lab", "front"], ["'front' named twice"]),
    (['door "1"'], ["NAME", "reader name", "'door \"1\"'"]),
    (["front", "--colour"], ["unrecognized arguments: --colour"]),
    (["--port", "80", "front"], ["--port", "1024..65534", "'80'"]),
    (["--port", "65533", "front", "lab"], ["--port", "no room for 2 readers"]),
    (["--dir", "/tmp/" + "d" * 100, "front"], ["--dir", "too long"]),
    ([], ["NAME"]),
])
def test_rig_readers_refuses_bad_usage_in_one_line(capsys, argv, named):
    result = in_process(capsys, "rig", "readers", *argv)

    assert_one_line_usage_error(result, *named)


def test_rig_readers_serves_named_readers_until_ctrl_c_and_leaves_nothing_running(
        tmp_path, demo_pki):
    base = free_ports(4)
    rig = started(tmp_path, "rig", "rig", "readers", "--dir", str(tmp_path / "pcsc"), "--port",
                  str(base), "front", "lab")
    card = None
    try:
        wait_output(rig, "readers ready")
        text = output(rig)
        socket_path = tmp_path / "pcsc" / "run" / "pcscd.comm"
        assert f'[readers] pcsc_socket = "{socket_path}"' in text
        assert f"reader front  vpcd slot 0 on port {base}, slot 1 on port {base + 1}" in text
        assert f"reader lab    vpcd slot 0 on port {base + 2}, slot 1 on port {base + 3}" in text
        found = re.search(r"pcscd running \(pid (\d+)\)", text)
        assert found is not None, text
        pcscd = int(found.group(1))

        listed = subprocess.run([sys.executable, "-m", "gateway.cli", "card", "readers", "--json"],
                                capture_output=True, text=True, timeout=30,
                                env={**os.environ, "PCSCLITE_CSOCK_NAME": str(socket_path)})
        assert sorted(r["pcsc_name"] for r in json.loads(listed.stdout)) == [
            "front 00 00", "front 00 01", "lab 00 00", "lab 00 01"]

        card = started(tmp_path, "card", "card", "serve", "--reader-port", str(base + 2),
                       "--card", str(demo_pki.cards["bob"]))
        wait_output(card, "card bob inserted")

        rig.kill(signal.SIGINT)  # Ctrl-C: the terminal signals rig readers' group, not pcscd's
        assert rig.popen.wait(15) == 0, output(rig)
        assert output(rig).endswith("readers stopped: pcscd and its readers are gone\n")
        assert not alive(pcscd)
        assert not socket_path.exists() or not _accepts(socket_path)
        # The card saw its reader go away and ended by itself.
        wait_until(lambda: card.popen.poll() is not None, 10, "the card to end", None)
        assert "closed the connection" in output(card)
    finally:
        rig.stop()
        if card is not None:
            card.stop()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        return s.connect_ex(str(path)) == 0


def test_rig_readers_on_a_taken_port_says_so_in_one_line_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = portvakt("rig", "readers", "--dir", str(tmp_path / "pcsc"), "--port", str(port),
                          "front")

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"vpcd port {port} (reader front) is in use" in result.stderr


# --- portvakt pki demo -------------------------------------------------------------------------

def test_pki_demo_prints_each_cards_identity_and_writes_its_certificate_as_pem(capsys, tmp_path):
    result = in_process(capsys, "pki", "demo", str(tmp_path / "pki"))

    assert result.returncode == 0, result.stderr
    cards = {line.split()[1]: line for line in result.stdout.splitlines()
             if line.startswith("card ")}
    assert sorted(cards) == ["alice", "bob", "carol", "dave", "mallory"]
    for name, line in cards.items():
        card_file = tmp_path / "pki" / "cards" / f"{name}.card.json"
        pem = tmp_path / "pki" / "cards" / f"{name}.cert.pem"
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        # The PEM is the certificate on the card, and the printed key is what the gateway's
        # trust code extracts from it.
        assert cert.public_bytes(Encoding.DER) == read_card(card_file).certificate_der()
        assert f"identity {extract_identity(cert, 'upn')} " in line
        assert str(card_file) in line and str(pem) in line
    assert "identity upn:alice@demo.example " in cards["alice"]
    assert "identity upn:alice@demo.example " in cards["mallory"]  # a copied certificate
    assert "revoked" in cards["bob"] and "expired" in cards["dave"]


@pytest.mark.parametrize(("existing", "what"), [
    ("root.pem", "a CA"), ("root.key", "a private key"), ("issuing.key", "a private key"),
    ("cards/carol.card.json", "a private key"),
])
def test_pki_demo_refuses_to_overwrite_a_ca_or_a_private_key(capsys, tmp_path, existing, what):
    folder = tmp_path / "pki"
    (folder / existing).parent.mkdir(parents=True, exist_ok=True)
    (folder / existing).write_text("precious\n")

    result = in_process(capsys, "pki", "demo", str(folder))

    assert_one_line_usage_error(result, str(folder / existing), what, "--force")
    assert (folder / existing).read_text() == "precious\n"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  ) == [existing]


def test_pki_demo_over_a_demo_pki_needs_force_and_then_replaces_it(capsys, tmp_path):
    folder = tmp_path / "pki"
    assert in_process(capsys, "pki", "demo", str(folder)).returncode == 0
    root_key = (folder / "root.key").read_bytes()

    refused = in_process(capsys, "pki", "demo", str(folder))
    assert_one_line_usage_error(refused, f"{folder / 'root.pem'} exists")
    assert (folder / "root.key").read_bytes() == root_key

    forced = in_process(capsys, "pki", "demo", "--force", str(folder))
    assert forced.returncode == 0, forced.stderr
    assert (folder / "root.key").read_bytes() != root_key
    assert (folder / "root.key").stat().st_mode & 0o777 == 0o600


def test_pki_demo_into_a_file_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "pki").write_text("not a folder\n")

    assert_one_line_usage_error(in_process(capsys, "pki", "demo", str(tmp_path / "pki")),
                                "is not a folder")
