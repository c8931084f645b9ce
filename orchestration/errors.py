"""Errors raised for bad user input: each names the offending field."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """Bad user input. `field` names the parameter; the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
