"""Errors of the client: one class, with the HTTP status when the server answered."""

from __future__ import annotations


class ClientError(Exception):
    """The server could not be reached, or answered with an error.

    ``status`` is the HTTP status (None when the server was not reached) and
    ``code`` the contract's error code (``run_not_found``, ...) when it sent one.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ProducerError(ClientError):
    """A producer could not deliver a batch (the events of that batch are not in the log)."""
