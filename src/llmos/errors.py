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


class Unauthorized(LLMOSError):
    """No token, or one that is unknown, expired or revoked."""

    status = 401
    type = "authentication_error"


class Forbidden(LLMOSError):
    """Authenticated, but the role or the token's scopes do not allow this."""

    status = 403
    type = "permission_error"


class TooManyRequests(LLMOSError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after
