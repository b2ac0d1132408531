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
    """Raised inside the training loop on SIGINT after a checkpoint was saved."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
