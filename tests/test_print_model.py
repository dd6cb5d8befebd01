"""Pure parts of print release: the printer refusal rule, print user normalisation, queue names
in URIs, and IPP request encoding (pyipp's serializer plus the tags it lacks)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyipp.enums import IppOperation, IppPrinterState, IppTag
from pyipp.parser import parse

from printer_drivers.ipp import encode_request
from printer_drivers.model import queue_of, refusal
from printer_drivers.users import normalise_print_user

IDLE = {"printer-state": IppPrinterState.IDLE, "printer-is-accepting-jobs": True}


class TestRefusal:
    @pytest.mark.parametrize("reasons", [
        "none", ["none"], "toner-low-warning", ["media-low-report", "toner-low-warning"],
        "hold-new-jobs", "media-empty",  # no suffix: not an "-error"
        "cups-missing-filter-warning",
    ])
    def test_an_idle_accepting_printer_with_warnings_or_reports_is_not_refused(
            self, reasons: Any) -> None:
        assert refusal({**IDLE, "printer-state-reasons": reasons}) is None

    @pytest.mark.parametrize(("reasons", "detail"), [
        ("media-empty-error", "media-empty-error"),
        (["toner-low-warning", "door-open-error", "media-jam-error"],
         "door-open-error,media-jam-error"),
    ])
    def test_any_reason_ending_in_error_refuses(self, reasons: Any, detail: str) -> None:
        assert refusal({**IDLE, "printer-state-reasons": reasons}) == ("printer-error", detail)

    def test_a_stopped_printer_is_refused_whatever_its_reasons(self) -> None:
        stopped = {"printer-state": IppPrinterState.STOPPED, "printer-is-accepting-jobs": True,
                   "printer-state-reasons": "paused"}
        assert refusal(stopped) == ("printer-stopped", "paused")

    def test_a_printer_not_accepting_jobs_is_refused(self) -> None:
        assert refusal({**IDLE, "printer-is-accepting-jobs": False,
                        "printer-state-reasons": "none"}) == ("printer-not-accepting", "")

    def test_a_printing_printer_is_fine(self) -> None:
        assert refusal({"printer-state": IppPrinterState.PROCESSING,
                        "printer-is-accepting-jobs": True}) is None

    def test_an_answer_without_a_state_is_refused(self) -> None:
        assert refusal({}) == ("printer-state-unknown", "")


class TestPrintUsers:
    @pytest.mark.parametrize("name", ["alice", "Alice", "CORP\\alice", "corp\\ALICE",
                                      "alice@CORP.EXAMPLE", "CORP\\alice@corp.example",
                                      "  alice  ", "A\\B\\alice"])
    def test_the_documented_forms_are_one_user(self, name: str) -> None:
        assert normalise_print_user(name) == "alice"

    @pytest.mark.parametrize("name", ["", "   ", "CORP\\", "@realm", "\\@x"])
    def test_nothing_left_is_empty(self, name: str) -> None:
        assert normalise_print_user(name) == ""

    def test_other_names_stay_apart(self) -> None:
        assert normalise_print_user("alice2") != normalise_print_user("alice")
        assert normalise_print_user("al.ice") == "al.ice"

    @given(st.text(max_size=40))
    def test_normalising_is_idempotent_and_never_raises(self, name: str) -> None:
        n = normalise_print_user(name)
        assert normalise_print_user(n) == n
        assert "\\" not in n and "@" not in n


@pytest.mark.parametrize(("uri", "queue"), [
    ("ipp://localhost:631/printers/findme", "findme"),
    ("ipp://localhost/printers/Floor-2", "Floor-2"),
    ("ipps://cups.example:443/classes/all", "all"),
    ("ipp://localhost/jobs/12", ""),
    ("", ""),
])
def test_queue_of_a_printer_uri(uri: str, queue: str) -> None:
    assert queue_of(uri) == queue


class TestEncoding:
    def test_attributes_pyipp_has_no_tag_for_are_encoded_not_dropped(self) -> None:
        raw = encode_request(IppOperation.GET_JOBS, [(IppTag.OPERATION, {
            "attributes-charset": "utf-8", "attributes-natural-language": "en",
            "printer-uri": "ipp://localhost/", "requesting-user-name": "portvakt",
            "which-jobs": "not-completed", "first-job-id": 42, "limit": 5,
            "requested-attributes": ["job-id", "job-state"]})], request_id=7)
        back = parse(raw)
        assert back["request-id"] == 7
        ops = back["operation-attributes"]
        assert ops["first-job-id"] == 42 and ops["limit"] == 5
        assert ops["requested-attributes"] == ["job-id", "job-state"]
        assert ops["requesting-user-name"] == "portvakt"

    def test_a_job_group_is_encoded_after_the_operation_group(self) -> None:
        raw = encode_request(IppOperation.CUPS_MOVE_JOB, [
            (IppTag.OPERATION, {"printer-uri": "ipp://localhost/printers/findme", "job-id": 3}),
            (IppTag.JOB, {"job-printer-uri": "ipp://localhost/printers/p1"})])
        back = parse(raw)
        assert back["operation-attributes"]["job-id"] == 3
        assert back["jobs"] == [{"job-printer-uri": "ipp://localhost/printers/p1"}]

    def test_purge_job_is_a_boolean(self) -> None:
        raw = encode_request(IppOperation.CANCEL_JOB, [(IppTag.OPERATION, {"purge-job": True})])
        assert parse(raw)["operation-attributes"]["purge-job"] is True

    def test_an_attribute_without_a_known_tag_is_an_error_not_silence(self) -> None:
        with pytest.raises(KeyError, match="no-such-attribute"):
            encode_request(IppOperation.GET_JOBS, [(IppTag.OPERATION, {"no-such-attribute": 1})])
