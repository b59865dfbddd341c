"""Every error runevents raises on purpose.

One base class, :class:`RuneventsError`; the class docstring is the default
message and ``code`` is the stable machine name clients see in
``{"error": {"code": ..., "message": ...}}``. The HTTP status of each family is
decided in exactly one place, ``api/errors.py``; nothing below the edge knows
about HTTP.

Tree::

    RuneventsError
    ├── InvalidInput            (422)  bad ids, bad events, bad options
    │   ├── InvalidEvent              one bad NDJSON line (carries ``line``)
    │   └── IdempotencyKeyReused      the key named another batch (other bytes)
    ├── NotFound                (404)
    │   ├── RunNotFound
    │   ├── ConfigurationNotFound
    │   └── LogNotFound               storage has no object at that key
    ├── Conflict                (409)
    │   ├── RunEnded                  the run already has run.completed
    │   ├── InvalidTransition         status change not allowed
    │   └── WriterBusy                another writer holds the run's log
    ├── LogExpired              (410)  retention removed the log body
    ├── PayloadTooLarge         (413)
    ├── UnsupportedMediaType    (415)
    ├── Unauthorized            (401)
    ├── Forbidden               (403)
    ├── StorageError            (503 + Retry-After)  disk/object storage failure
    │   ├── DatabaseError             the SQL database failed
    │   ├── LogDamaged                a read met damaged bytes (carries ``offset``)
    │   ├── WriterFenced              this process lost the run's writer lease
    │   └── WriterMoving              the run's writer is held elsewhere for now
    └── ConfigError                    bad configuration/tokens file (start-up)
"""

from __future__ import annotations


class RuneventsError(Exception):
    """An error occurred in runevents."""

    code = "error"

    def __init__(self, message: str | None = None, **details: object) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = details
        super().__init__(self.message)


class InvalidInput(RuneventsError):
    """The request is invalid."""

    code = "invalid_input"


class InvalidEvent(InvalidInput):
    """An event line is invalid."""

    code = "invalid_event"

    def __init__(self, message: str | None = None, *, line: int | None = None) -> None:
        self.line = line
        if line is not None and message is not None:
            message = f"line {line}: {message}"
        super().__init__(message, line=line)


class IdempotencyKeyReused(InvalidInput):
    """This Idempotency-Key was used for a batch with a different body."""

    code = "idempotency_key_reused"


class NotFound(RuneventsError):
    """Not found."""

    code = "not_found"


class RunNotFound(NotFound):
    """No such run."""

    code = "run_not_found"


class ConfigurationNotFound(NotFound):
    """No such configuration."""

    code = "configuration_not_found"


class LogNotFound(NotFound):
    """The log storage has no object at that key."""

    code = "log_not_found"


class Conflict(RuneventsError):
    """The request conflicts with the current state."""

    code = "conflict"


class RunEnded(Conflict):
    """The run has already ended."""

    code = "run_ended"


class InvalidTransition(Conflict):
    """That status change is not allowed."""

    code = "invalid_transition"


class WriterBusy(Conflict):
    """Another writer holds this run's log."""

    code = "writer_busy"


class MaintenanceBusy(Conflict):
    """Another process is compacting, expiring or reindexing this run right now."""

    code = "maintenance_busy"


class LogExpired(RuneventsError):
    """The events of this run were removed by the retention policy."""

    code = "log_expired"


class PayloadTooLarge(RuneventsError):
    """The request body or one event is too large."""

    code = "payload_too_large"


class UnsupportedMediaType(RuneventsError):
    """Unsupported content type."""

    code = "unsupported_media_type"


class Unauthorized(RuneventsError):
    """A valid bearer token is required."""

    code = "unauthorized"


class Forbidden(RuneventsError):
    """This token may not do that."""

    code = "forbidden"


class StorageError(RuneventsError):
    """The log storage failed."""

    code = "storage_error"
    #: seconds a client should wait before retrying (the Retry-After header)
    retry_after = 1


class WriterFenced(StorageError):
    """This process no longer owns the run's log (its writer lease was taken over)."""

    code = "writer_fenced"


class WriterMoving(StorageError):
    """The run's writer is held by another process for now; retry shortly."""

    code = "writer_moving"

    def __init__(self, message: str | None = None, *, owner: str | None = None) -> None:
        #: the process holding the run's writer lease, when the database named it (the
        #: ingest route forwards the batch there: ``api/forward.py``); None when only a
        #: local guard (another writer's file lock on this host) said no
        self.owner = owner
        super().__init__(message)


class ConfigError(RuneventsError):
    """A configuration or tokens file is invalid."""

    code = "config_error"


class LogDamaged(StorageError):
    """The log holds damaged bytes: it needs recovery (contract 2.2)."""

    code = "log_damaged"

    def __init__(self, message: str | None = None, *, offset: int | None = None) -> None:
        #: where the damage was found; a full recovery scan (no checkpoint) cuts there
        self.offset = offset
        super().__init__(message)


class DatabaseError(StorageError):
    """The database failed."""

    code = "database_error"
