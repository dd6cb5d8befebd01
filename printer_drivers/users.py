"""Print user names: how a job's owner (IPP job-originating-user-name) is matched to the
`print_user` of a person in the access policy.

Clients name the same account in several ways: Windows sends `DOMAIN\\user`, Kerberos-
authenticated clients `user@REALM`, Unix `lp` plain `user`. Both sides of the comparison are
normalised the same way:

1. surrounding white space is removed;
2. everything up to and including the last backslash goes (`CORP\\alice` -> `alice`);
3. everything from the first `@` on goes (`alice@CORP.EXAMPLE` -> `alice`);
4. the rest is case-folded (`Alice` -> `alice`).

So `CORP\\Alice`, `alice@corp.example` and `alice` are one print user. This assumes one namespace
of account names per site: `alice` of two domains would be the same person here.
"""

from __future__ import annotations

__all__ = ["normalise_print_user"]


def normalise_print_user(name: str) -> str:
    """The comparable form of a print user name (see the module docstring); "" when nothing
    is left (such a name matches no job)."""
    n = name.strip()
    n = n.rsplit("\\", 1)[-1]
    n = n.split("@", 1)[0]
    return n.strip().casefold()
