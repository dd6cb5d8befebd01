"""Swedish personal identity numbers for tests: the Luhn check digit, computed independently of
gateway.policy (so a test can catch a wrong check there)."""

from __future__ import annotations


def luhn(digits9: str) -> int:
    """The check digit for the nine digits YYMMDDNNN."""
    total = 0
    for i, ch in enumerate(digits9):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10
