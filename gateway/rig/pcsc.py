"""An isolated pcscd with one vpcd virtual reader per door, and virtual cards to insert.

pcscd ignores PCSCLITE_CSOCK_NAME on the server side, so it runs in a private mount namespace
where a folder of ours is bind-mounted over /run/pcscd: its socket appears in that folder and
clients reach it by setting PCSCLITE_CSOCK_NAME. Each reader gets its own copy of the vpcd
driver (a shared driver file made one card appear in every reader).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from gateway.rig.proc import RigProcess, free_port_pair, port_free, port_open, wait_until

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")


class PcscRig:
    def __init__(self, workdir: Path, readers: dict[str, int], pcscd: RigProcess) -> None:
        self.workdir = workdir
        self.readers = readers  # friendly name -> vpcd port of slot 0
        self.pcscd = pcscd
        self.socket = workdir / "run" / "pcscd.comm"
        self.cards: dict[str, RigProcess] = {}
        self._apdu_log = False

    @property
    def env(self) -> dict[str, str]:
        """Environment for PC/SC clients (pyscard, opensc) of this pcscd."""
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket)}

    @classmethod
    def start(cls, workdir: Path, readers: Iterable[str] = ("Door0",),
              *, apdu_log: bool = False, base_port: int | None = None) -> PcscRig:
        """Start pcscd with one vpcd reader per name, its files in `workdir`. Each reader takes
        two ports (its slots 0 and 1): free ones, or with `base_port` N the i-th reader gets
        N + 2i and N + 2i + 1 (RuntimeError naming the port if one is taken). Returns once the
        socket exists and every reader's port listens; RuntimeError or TimeoutError with
        pcscd's log if not."""
        if not VPCD_DRIVER.exists():
            raise RuntimeError(f"{VPCD_DRIVER} missing: install the Debian package vsmartcard-vpcd")
        conf = workdir / "reader.conf.d"
        drivers = workdir / "drivers"
        run = workdir / "run"
        for d in (conf, drivers, run):
            d.mkdir(parents=True, exist_ok=True)
        ports: dict[str, int] = {}
        for i, name in enumerate(readers):
            port = free_port_pair() if base_port is None else base_port + 2 * i
            if base_port is not None:
                for p in (port, port + 1):
                    if not port_free(p):
                        raise RuntimeError(f"vpcd port {p} (reader {name}) is in use")
            # Two readers may share a name (pcscd then tells them apart by index only): the
            # second is kept as "name~1" here; its FRIENDLYNAME stays `name`.
            ports[name if name not in ports else f"{name}~{i}"] = port
            lib = drivers / f"libifdvpcd-{i}.so"
            shutil.copy(VPCD_DRIVER, lib)
            (conf / f"reader{i}").write_text(
                f'FRIENDLYNAME "{name}"\nDEVICENAME /dev/null:{port}\n'
                f"LIBPATH {lib}\nCHANNELID {port}\n")
        rig = cls(workdir, ports, cls._launch(workdir, apdu_log))
        rig._apdu_log = apdu_log
        rig._wait_ready()
        return rig

    @staticmethod
    def _launch(workdir: Path, apdu_log: bool) -> RigProcess:
        flags = "-f -a" if apdu_log else "-f"
        script = (f"mkdir -p /run/pcscd && mount --bind {workdir / 'run'} /run/pcscd && "
                  f"exec pcscd {flags} -c {workdir / 'reader.conf.d'}")
        return RigProcess("pcscd", ["unshare", "-m", "--propagation", "private", "sh", "-c",
                                    script], workdir / "pcscd.log")

    def _wait_ready(self) -> None:
        try:
            wait_until(self.socket.exists, 10, "pcscd socket", self.pcscd)
            for name, port in self.readers.items():
                wait_until(functools.partial(port_open, port), 10, f"vpcd reader {name}",
                           self.pcscd)
        except BaseException:
            self.pcscd.stop()
            raise

    def restart(self) -> None:
        """Stop pcscd (every reader disappears) and start it again on the same readers."""
        for key in list(self.cards):
            reader, _, slot = key.partition("/")
            self.remove(reader, slot=int(slot))
        self.pcscd.stop()
        self.socket.unlink(missing_ok=True)
        wait_until(lambda: not any(port_open(p) for p in self.readers.values()), 10,
                   "vpcd ports to close")
        self.pcscd = self._launch(self.workdir, self._apdu_log)
        self._wait_ready()

    def wait_slot(self, reader: str, present: bool, *, slot: int = 0,
                  timeout: float = 10.0) -> None:
        """Wait until pcscd reports the slot with (or without) a card. Needs PCSCLITE_CSOCK_NAME
        set to `self.socket` in this process (libpcsclite reads it once)."""
        if _wait_slot(reader, slot, present, timeout) != 0:
            raise TimeoutError(f"reader {reader} slot {slot}: card "
                               f"{'in' if present else 'out'} not seen")

    def insert(self, reader: str, card_file: Path, *, slot: int = 0) -> RigProcess:
        """Insert a virtual card (its own process) into `reader`; returns the card's process.
        A card already in the slot is removed first, and the removal seen by pcscd."""
        if f"{reader}/{slot}" in self.cards:
            self.remove(reader, slot=slot, wait=True)
        port = self.readers[reader] + slot
        proc = RigProcess(
            f"card@{reader}", [sys.executable, "-m", "gateway.cli", "card", "serve",
                               "--reader-port", str(port), "--card", str(card_file)],
            self.workdir / f"card-{reader}-{slot}.log")
        self.cards[f"{reader}/{slot}"] = proc
        return proc

    def remove(self, reader: str, *, slot: int = 0, wait: bool = False) -> None:
        """Take the card out; with `wait`, until pcscd has noticed (vpcd polls presence)."""
        proc = self.cards.pop(f"{reader}/{slot}", None)
        if proc is not None:
            proc.stop()
            if wait:
                self.wait_slot(reader, False, slot=slot)

    def stop(self) -> None:
        for key in list(self.cards):
            with contextlib.suppress(Exception):
                self.cards.pop(key).stop()
        self.pcscd.stop()

    def __enter__(self) -> PcscRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_slot(reader: str, slot: int, present: bool, timeout: float) -> int:
    from smartcard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        print(f"pcscd: {scard.SCardGetErrorMessage(hr)}", file=sys.stderr)
        return 1
    try:
        _, names = scard.SCardListReaders(ctx, [])
        # pcscd adds an enumeration index between name and slot: "Door0 00 01".
        matches = [n for n in names if n.startswith(f"{reader} ") and n.endswith(f" {slot:02X}")
                   and len(n) == len(reader) + 6]
        if len(matches) != 1:
            print(f"reader {reader} slot {slot}: found {matches}", file=sys.stderr)
            return 1
        deadline = time.monotonic() + timeout
        state = scard.SCARD_STATE_UNAWARE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"{matches[0]}: card {'in' if present else 'out'} not seen",
                      file=sys.stderr)
                return 1
            hr, states = scard.SCardGetStatusChange(ctx, int(left * 1000), [(matches[0], state)])
            if hr != scard.SCARD_S_SUCCESS:
                continue
            state = states[0][1] & ~scard.SCARD_STATE_CHANGED
            if bool(state & scard.SCARD_STATE_PRESENT) == present:
                return 0
    finally:
        scard.SCardReleaseContext(ctx)

