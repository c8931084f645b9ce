"""Errors raised for bad user input: each names the offending field."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """Bad user input. `field` names the parameter; the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self):
        # Rebuilt from its two parts when it crosses a process (a Ray actor's error reaches the caller as itself).
        return type(self), (self.field, self.reason)
