"""Errors a user can cause, each with the HTTP status the API answers with.

Services raise these; the API turns them into JSON error bodies, the CLI into one red line
and a non-zero exit. Anything else escaping a service is a bug.
"""

from __future__ import annotations


class LLMOSError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(LLMOSError):
    status = 422


class NotFound(LLMOSError):
    status = 404
    type = "not_found_error"


class Conflict(LLMOSError):
    status = 409
    type = "conflict_error"


class PayloadTooLarge(LLMOSError):
    status = 413


class DataCorrupted(LLMOSError):
    """Stored bytes no longer match their hash: an integrity failure, never data."""

    status = 500
    type = "data_corruption_error"
