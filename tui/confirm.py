"""The confirmation every dashboard action goes through: y (or the button) carries it out;
n, Escape or the Cancel button (focused at first, so a stray Enter cancels) does nothing."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[bool]):
    """Dismissed with True when confirmed, False when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Confirm"),
        Binding("n", "answer(False)", "Cancel"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, question: str, detail: str = "", confirm: str = "Confirm",
                 danger: bool = False) -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.confirm_label = confirm
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)
            if self.detail:
                yield Static(self.detail, id="detail", markup=False)
            with Horizontal(id="buttons"):
                yield Button(f"{self.confirm_label} (y)", id="yes", compact=True,
                             variant="error" if self.danger else "warning")
                yield Button("Cancel (n)", id="no", compact=True, variant="default")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, confirmed: bool) -> None:
        self.dismiss(confirmed)


class PrintReleaseScreen(ModalScreen["tuple[str, str] | None"]):
    """Asks whose held jobs to release and at which printer (a technician's release for
    someone without their card); dismissed with (user, printer), or None when cancelled.
    The release itself still goes through ConfirmScreen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def __init__(self, printers: list[str]) -> None:
        super().__init__()
        self.printers = printers

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Release someone's held print jobs", id="question", markup=False)
            yield Static(f"Printers: {', '.join(self.printers) or 'none reported'}. Enter moves "
                         "on, Escape cancels.", id="detail", markup=False)
            yield Input(placeholder="print user name (e.g. alice)", id="print-user")
            yield Input(value=self.printers[0] if self.printers else "",
                        placeholder="printer", id="print-printer")

    def on_mount(self) -> None:
        self.query_one("#print-user", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        user = self.query_one("#print-user", Input).value.strip()
        printer = self.query_one("#print-printer", Input).value.strip()
        if event.input.id == "print-user" and user:
            self.query_one("#print-printer", Input).focus()
        elif user and printer:
            self.dismiss((user, printer))

    def action_cancel(self) -> None:
        self.dismiss(None)
