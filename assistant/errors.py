"""Errors the core raises for bad input or missing rights; the API and UI turn them into 4xx / messages."""

from __future__ import annotations


class HoneError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HoneError):
    pass


class Unauthorized(HoneError):
    status = 401
    type = "authentication_error"


class Forbidden(HoneError):
    status = 403
    type = "permission_error"


class NotFound(HoneError):
    status = 404
    type = "not_found_error"


class Conflict(HoneError):
    status = 409
    type = "conflict_error"


class TooLarge(HoneError):
    status = 413
    type = "request_too_large"


class RateLimited(HoneError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, sent as Retry-After


class BackendUnavailable(HoneError):
    """A system Hone relies on (the external serving backend, a training cluster) failed or could not be reached."""

    status = 502
    type = "backend_error"
