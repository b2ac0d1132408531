"""SIGINT / SIGTERM during training: a flag checked between batches, so a checkpoint can be saved.
"""

from __future__ import annotations

import signal


class Interrupt:
    """Turns SIGINT (Ctrl-C) and SIGTERM (what schedulers send before killing a job) into a flag
    checked between batches; a second signal of the same kind acts as it normally does."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        if self.requested:
            previous = self._previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            if signum == signal.SIGINT and previous is signal.default_int_handler:
                raise KeyboardInterrupt
            if signum == signal.SIGTERM:
                signal.raise_signal(signum)
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
