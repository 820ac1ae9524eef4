"""Every error a jobsup user can see derives from :class:`JobsupError`.

Each class carries a stable ``code`` so that the daemon can send an error over
the wire and the client can raise the same class on the other side.
"""

from __future__ import annotations


class JobsupError(Exception):
    """Raised for any jobsup failure; catch this to catch them all."""

    code = "error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


class ValidationError(JobsupError):
    """Raised when a request, payload or config value is not valid."""

    code = "validation"

    @property
    def errors(self) -> list[dict]:
        """Each bad field as ``{"loc": "a.b", "msg": "..."}``."""
        return list(self.details.get("errors", []))


class PayloadTooLarge(ValidationError):
    """Raised when a payload is over its job type's ``max_payload``."""

    code = "payload_too_large"


class UnknownJobType(JobsupError):
    """Raised when a submit names a job type the daemon's config does not define."""

    code = "unknown_job_type"


class NotFound(JobsupError):
    """Raised when a job id does not exist (never did, or expired)."""

    code = "not_found"


class Unavailable(JobsupError):
    """Raised when the daemon or its Redis cannot take the request now."""

    code = "unavailable"


class ShuttingDown(Unavailable):
    """Raised when the daemon is draining after SIGTERM and takes no new jobs."""

    code = "shutting_down"


class Timeout(JobsupError):
    """Raised when a wait ran out of time before the job finished."""

    code = "timeout"


class Unauthorized(JobsupError):
    """Raised when the API refuses a client (CurveZMQ key not allowed)."""

    code = "unauthorized"


class ActionsDisabled(JobsupError):
    """Raised by the HTTP side for a POST while ``[web] actions`` is false."""

    code = "actions_disabled"


class BadToken(Unauthorized):
    """Raised by the HTTP side for a POST without the right ``X-Jobsup-Token``."""

    code = "bad_token"


class TooManyStreams(Unavailable):
    """Raised by the HTTP side when ``[web] max_streams`` event streams are open."""

    code = "too_many_streams"


class BadRequest(JobsupError):
    """Raised when a request frame is malformed or names an unknown operation."""

    code = "bad_request"


class ConfigError(JobsupError):
    """Raised when a config file cannot be read or is invalid."""

    code = "config"

    @property
    def errors(self) -> list[dict]:
        return list(self.details.get("errors", []))


class JobFailed(JobsupError):
    """Raised by ``Client.wait(..., raise_on_failure=True)`` when a job ended failed."""

    code = "job_failed"


class InvalidTransition(JobsupError):
    """Raised when the daemon's code asks a state machine for a move it does not allow
    (a bug in jobsup; the loop logs it and keeps serving)."""

    code = "internal"


_BY_CODE: dict[str, type[JobsupError]] = {}


def _index(cls: type[JobsupError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(JobsupError)


def from_wire(error: dict) -> JobsupError:
    """Rebuild the exception a daemon reply describes."""
    cls = _BY_CODE.get(str(error.get("code")), JobsupError)
    details = error.get("details") or {}
    return cls(str(error.get("message", "")), **details)
