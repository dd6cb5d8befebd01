"""NIST PKITS (sections 4.1-4.16) through the door's code path and through `portvakt verify`:
NIST's verdict for every case, or the reason Portvakt knowingly differs (tests/pkits.py,
docs/trust.md), and the same verdict both ways."""

from __future__ import annotations

import pytest

from tests.pkits import REQUIRED_SECTIONS, Case, cases, run_door, run_verify

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.number}-{c.name}" for c in CASES])
def test_pkits_case_at_the_door_and_in_verify(case: Case, tmp_path):
    door = run_door(case, tmp_path / "door")
    verify = run_verify(case, tmp_path / "verify")
    assert door == verify, f"the door says {door}, portvakt verify says {verify}"
    if case.out_of_scope is None:
        assert door.accepted == case.expected, (
            f"NIST: {'accept' if case.expected else 'reject'}; Portvakt: {door}")
    else:
        assert door.accepted != case.expected, (
            f"{case.name} now agrees with NIST: take it out of OUT_OF_SCOPE and docs/trust.md")


def test_the_required_sections_agree_on_all_but_the_dsa_cases():
    required = [c for c in CASES if c.required]
    assert {c.section for c in required} == set(REQUIRED_SECTIONS)
    assert len(required) == 78
    knowingly_different = [c.name for c in required if c.out_of_scope]
    assert knowingly_different == ["ValidDSASignaturesTest4", "ValidDSAParameterInheritanceTest5"]


def test_every_case_of_the_suite_is_listed_once():
    assert len(CASES) == 224
    assert len({c.name for c in CASES}) == 224
