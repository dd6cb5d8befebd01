"""The project's own error hierarchy. Every library exception (pyscard, nfcpy, pymodbus, aiomqtt,
IPP, sqlite) is translated into one of these at the adapter boundary."""

from __future__ import annotations


class PortvaktError(Exception):
    """Base of every error Portvakt raises on purpose."""


class ConfigError(PortvaktError):
    """A configuration file is unreadable or invalid. `str()` names the file, key and expected form."""

    def __init__(self, file: str, key: str, expected: str) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        super().__init__(f"{file}: {key}: {expected}")


class InputError(PortvaktError):
    """Bad input from outside (a file, a card, a message) that cannot be used."""


class TrustError(PortvaktError):
    """Trust store material (anchor, intermediate, CRL) is unusable."""


class CardError(PortvaktError):
    """A credential misbehaved or left during a transaction. `reason` is the journaled code."""

    reason = "card-error"


class NotACredential(CardError):
    """No configured application answered: not a PIV card or mobile credential."""

    reason = "not-piv"


class CardRemoved(CardError):
    """The card or phone left the field during the transaction."""

    reason = "card-removed"


class CardTimeout(CardError):
    """The credential did not finish its transaction within the reader's timeout."""

    reason = "card-timeout"


class MalformedCardData(CardError):
    """The card's answer does not parse (truncated or absurd TLV, bad certificate)."""

    reason = "malformed-card-data"


class ReaderError(PortvaktError):
    """A reader is unavailable or the transport to it failed."""


class DoorDriverError(PortvaktError):
    """A relay board could not be driven or read."""


class BoardUnreachable(DoorDriverError):
    """The relay board does not answer (connection refused, lost, or timed out)."""


class PrinterError(PortvaktError):
    """The print spooler or a printer could not be used."""


class JournalError(PortvaktError):
    """The journal could not be written or read."""
