"""docs/operations.md's "Bench site" recipe, walked as written: a new user's two-door site from
the document alone.

The commands are the document's, not a copy: the section's fenced blocks are read from the
markdown in order. A ```toml block whose first line is `# file: NAME` is saved as
~/portvakt-bench/NAME where it appears. A ```sh block runs in bash (`-e`) in the home folder, as
in a new terminal; one whose first line is `# terminal N ... once it prints "A" and "B"` keeps
running in the background (its own process group, as a terminal's job) and the walk goes on once
its output holds every quoted text. HOME is a temporary folder (so `~/portvakt-bench` is
private to the test), PATH starts with this interpreter's bin folder (where `portvakt` is), and
the document's ports (1502 for the board, 35963-35966 for vpcd) are replaced by free ones.

At the end the card of step 8 is in the front door's reader: the journal must hold Alice's grant
there and the board's write log the strike's pulse. Then every terminal gets Ctrl-C (SIGINT to
its process group), in the order step 9 gives, and nothing the recipe started may be left.
`portvakt doctor` may exit 1 only for its `clock` line (no time daemon on a test machine).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.rig.proc import RigProcess, free_port, port_free, port_open, wait_until
from tests.conftest import repo_root

DOC = repo_root() / "docs" / "operations.md"
SECTION = "## Bench site: two doors on one machine, no hardware"
BENCH = "portvakt-bench"  # ~/portvakt-bench
BOARD_PORT = 1502
VPCD_PORTS = (35963, 35964, 35965, 35966)
TERMINAL = re.compile(r"^# terminal (\d+)\b.*once it prints (.+)$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]


def recipe() -> list[Block]:
    """The fenced blocks of the section, in order."""
    text = DOC.read_text()
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:] if end == -1 else text[start:end]
    return [Block(m["lang"], m["body"]) for m in
            re.finditer(r"^```(?P<lang>\w+)\n(?P<body>.*?)^```$", section, re.M | re.S)]


def free_ports(n: int) -> int:
    """A port N such that N .. N+n-1 are all free."""
    for _ in range(100):
        first = free_port()
        if first + n <= 65536 and all(port_free(p) for p in range(first, first + n)):
            return first
    raise RuntimeError(f"no {n} adjacent free ports")


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(parents.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Terminal:
    """A long-running block: a bash job in its own process group, its output in a file."""

    def __init__(self, number: int, block: Block, env: dict[str, str], home: Path,
                 logs: Path) -> None:
        self.number = number
        self.block = block
        self.proc = RigProcess(f"terminal {number}", ["bash", "-e", "-c", block.text],
                               logs / f"terminal-{number}.log", env=env, cwd=home)

    @property
    def output(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def wait_for(self, texts: list[str], timeout: float = 30) -> None:
        wait_until(lambda: all(t in self.output for t in texts), timeout,
                   f"terminal {self.number} to print {texts}", self.proc)

    def ctrl_c(self, timeout: float = 15) -> int:
        """SIGINT to the job's process group, as Ctrl-C in its terminal; its exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.popen.wait(timeout)


def test_the_bench_site_recipe_as_written_grants_alice_at_the_front_door(tmp_path):
    t0 = time.monotonic()
    blocks = recipe()
    assert [b.lang for b in blocks].count("sh") >= 6, blocks
    section = "\n".join(b.text for b in blocks)
    ports = {BOARD_PORT: free_port()}
    vpcd = free_ports(len(VPCD_PORTS))
    ports.update({p: vpcd + i for i, p in enumerate(VPCD_PORTS)})
    for placeholder in (BOARD_PORT, VPCD_PORTS[0]):  # the others follow from the first
        assert re.search(rf"(?<!\d){placeholder}(?!\d)", section), \
            f"the recipe no longer uses port {placeholder}: update this test's placeholders"

    def substituted(text: str) -> str:
        for placeholder, port in ports.items():
            text = re.sub(rf"(?<!\d){placeholder}(?!\d)", str(port), text)
        return text

    home = tmp_path / "home"
    home.mkdir()
    bench = home / BENCH
    logs = tmp_path / "logs"
    logs.mkdir()
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "portvakt").exists(), f"no portvakt in {bin_dir}: run make bootstrap"
    env = {k: v for k, v in os.environ.items() if k != "PCSCLITE_CSOCK_NAME"}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")

    terminals: list[Terminal] = []
    started: set[int] = set()
    outputs: list[str] = []
    try:
        for block in blocks:
            text = substituted(block.text)
            if block.lang == "toml":
                name = re.fullmatch(r"# file: (\S+)", block.first_line)
                assert name is not None, f"a toml block without '# file: NAME': {block.text}"
                tomllib.loads(text)  # the document's file is valid TOML
                (bench / name[1]).write_text(text)
                continue
            assert block.lang == "sh", block
            terminal = TERMINAL.match(block.first_line)
            if terminal is not None:
                t = Terminal(int(terminal[1]), Block("sh", text), env, home, logs)
                terminals.append(t)
                started |= {t.proc.pid}
                t.wait_for(re.findall(r'"([^"]+)"', terminal[2]))
                started |= descendants(t.proc.pid)
                continue
            result = subprocess.run(["bash", "-e", "-c", text], env=env, cwd=home,
                                    capture_output=True, text=True, timeout=60)
            outputs.append(result.stdout)
            if "portvakt doctor" in text:
                failed = [line for line in result.stdout.splitlines()
                          if not line.startswith("ok ")]
                assert all(line.split()[:2] == ["FAIL", "clock"] for line in failed), \
                    result.stdout + result.stderr
                assert result.returncode == (1 if failed else 0), result
            else:
                assert result.returncode == 0, f"{text}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr

        # Step 8's card is in the front door's reader.
        config = tomllib.loads((bench / "bench.toml").read_text())
        front = next(d for d in config["doors"] if d["name"] == "front")
        db = bench / config["gateway"]["state_dir"] / "portvakt.db"

        def granted() -> list[tuple[str, str, str]]:
            if not db.exists():
                return []
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT kind, door, person FROM events WHERE kind LIKE "
                                    "'access.%' ORDER BY seq").fetchall()

        wait_until(lambda: bool(granted()), 15, "a decision in the journal")
        assert granted() == [("access.granted", "front", "p-alice")]
        gateway = next(t for t in terminals if "portvakt run" in t.block.text)
        gateway.wait_for(["door front: granted"])
        writes = bench / "board-writes.jsonl"

        def strike() -> list[dict[str, Any]]:
            lines = writes.read_text().splitlines() if writes.exists() else []
            return [w for w in map(json.loads, lines) if w["coil"] == front["relay"]]

        # Locked at start, then the grant's pulse: unlocked for unlock_seconds, ended by the
        # board's own timer or the gateway's relock, whichever the board hears first.
        wait_until(lambda: len(strike()) >= 3, front["unlock_seconds"] + 10, "the pulse's end")
        assert [w["value"] for w in strike()[:3]] == [False, True, False], strike()
        on, off = strike()[1:3]
        assert abs(off["t"] - on["t"] - front["unlock_seconds"]) < 0.5, strike()
        board = next(t for t in terminals if "portvakt board serve" in t.block.text)
        assert f"coil {front['relay']} on" in board.output
        assert any("front" in out and "lab" in out for out in outputs)  # door list

        # Step 9: Ctrl-C in every terminal, the last started first.
        for t in reversed(terminals):
            started |= descendants(t.proc.pid)
            assert t.ctrl_c() == 0, t.output
        readers = next(t for t in terminals if "portvakt rig readers" in t.block.text)
        assert readers.output.endswith("readers stopped: pcscd and its readers are gone\n")
        # Before the clean-up below, which would kill what is left in each job's group.
        left = {p: _command(p) for p in started if alive(p)}
        assert not left, f"processes left running: {left}"
        assert not [p for p in ports.values() if port_open(p)]
    finally:
        for t in reversed(terminals):
            t.proc.stop()
    assert time.monotonic() - t0 < 90


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
