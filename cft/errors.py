"""The one error type users see.

Anything the user can fix (a bad recipe, a missing file, a corrupt bundle) is raised as
`CftError`; the CLI prints its message as one paragraph to stderr and exits with code 2,
without a traceback. Anything else is a bug in cft and keeps its traceback.
"""

from __future__ import annotations


class CftError(Exception):
    """A user-fixable problem. The message names the file/field/row and what to do."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message.strip()
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class TrainingInterrupted(Exception):
    """Raised inside the training loop on SIGINT/SIGTERM after a checkpoint was saved.
    The CLI prints the message (which says how to resume) and exits with `exit_code`
    (130 for Ctrl-C, 143 for SIGTERM, as shells report them)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
