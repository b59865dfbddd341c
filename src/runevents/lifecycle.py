"""The life of a run's log, in one place.

Every state a run's log goes through and every transition between them is
in :data:`TRANSITIONS`; :class:`HeldRun` (``held.py``) moves through it for a
run this process owns, and the repair loop (``repair.py``) reads the same
table to finish a run that a crash left between two states.

::

    state        writer lease       log                                  row (status / log_state)
    ----------   ----------------   ----------------------------------   ------------------------
    RELEASED     nobody             live file, no run.completed          live / live
    OWNED        one process        appended by that process only        live / live
    COMPLETING   the completer      run.completed durable in the log     live -> ended / live
    SEALED       nobody             fsynced, indexed, final (file://)    ended / plain
    UPLOADED     nobody             in the object store, spool removed   ended / plain
    COMPACTED    nobody             zstd frames + frame index            ended / compressed
    EXPIRED      nobody             gone (retention; deleted             ended / expired
                                    ``delete_delay_seconds`` later, so
                                    a read already under way finishes)

A transition is taken only by the process that holds the run's writer lease
(``ownership.py``) and, on one host, its file lock -- except the maintenance
steps on a sealed log (compact, expire), which take their own per-run lock.
"""

from __future__ import annotations

from enum import StrEnum

from runevents.models import LogState


class LogPhase(StrEnum):
    """Where a run's log is in its life (see the module doc)."""

    RELEASED = "released"
    OWNED = "owned"
    COMPLETING = "completing"
    SEALED = "sealed"
    UPLOADED = "uploaded"
    COMPACTED = "compacted"
    EXPIRED = "expired"


class Step(StrEnum):
    """What moves a log from one phase to the next."""

    #: a process takes the writer lease (and file lock); recovery checks the log first
    TAKE = "take"
    #: the owner lets go (an idle producer, shutdown); the run stays live
    RELEASE = "release"
    #: the owner learns another process took its lease: it never writes again
    FENCED = "fenced"
    #: run.completed (with the summary) is durable in the log
    COMPLETE = "complete"
    #: the row is finished and the log made final where it lives (file://)
    SEAL = "seal"
    #: the log is made final in the object store and the spool file removed
    UPLOAD = "upload"
    #: compaction replaced the plain log by zstd frames
    COMPACT = "compact"
    #: retention deleted the log body
    EXPIRE = "expire"


#: (phase, step) -> next phase. Anything else is a bug, raised as such.
TRANSITIONS: dict[tuple[LogPhase, Step], LogPhase] = {
    (LogPhase.RELEASED, Step.TAKE): LogPhase.OWNED,
    (LogPhase.OWNED, Step.RELEASE): LogPhase.RELEASED,
    (LogPhase.OWNED, Step.FENCED): LogPhase.RELEASED,
    (LogPhase.OWNED, Step.COMPLETE): LogPhase.COMPLETING,
    # a crash after run.completed: whoever takes the log next finishes the job
    (LogPhase.COMPLETING, Step.TAKE): LogPhase.COMPLETING,
    (LogPhase.COMPLETING, Step.RELEASE): LogPhase.COMPLETING,
    (LogPhase.COMPLETING, Step.FENCED): LogPhase.COMPLETING,
    (LogPhase.COMPLETING, Step.SEAL): LogPhase.SEALED,
    (LogPhase.COMPLETING, Step.UPLOAD): LogPhase.UPLOADED,
    (LogPhase.SEALED, Step.COMPACT): LogPhase.COMPACTED,
    (LogPhase.UPLOADED, Step.COMPACT): LogPhase.COMPACTED,
    (LogPhase.SEALED, Step.EXPIRE): LogPhase.EXPIRED,
    (LogPhase.UPLOADED, Step.EXPIRE): LogPhase.EXPIRED,
    (LogPhase.COMPACTED, Step.EXPIRE): LogPhase.EXPIRED,
}


class LifecycleError(RuntimeError):
    """A step that the table does not allow from the current phase (a bug)."""


def advance(phase: LogPhase, step: Step) -> LogPhase:
    """The phase after ``step``; LifecycleError if the table has no such transition."""
    try:
        return TRANSITIONS[(phase, step)]
    except KeyError:
        raise LifecycleError(f"no transition {step.value!r} from {phase.value!r}") from None


def phase_of(*, row_ended: bool, log_state: LogState, log_ended: bool, spooled: bool) -> LogPhase:
    """The phase a run is in, from its row and its log as found in storage.

    A row that is still live while its log already ends with run.completed,
    and an ended row whose log is still ``live``, are both COMPLETING: a crash
    cut the completion short, and the repair loop finishes it.
    """
    if log_state is LogState.EXPIRED:
        return LogPhase.EXPIRED
    if log_state is LogState.COMPRESSED:
        return LogPhase.COMPACTED
    if log_state is LogState.PLAIN:
        return LogPhase.UPLOADED if spooled else LogPhase.SEALED
    if row_ended or log_ended:
        return LogPhase.COMPLETING
    return LogPhase.RELEASED


#: the row's log_state in each phase
LOG_STATE: dict[LogPhase, LogState] = {
    LogPhase.RELEASED: LogState.LIVE,
    LogPhase.OWNED: LogState.LIVE,
    LogPhase.COMPLETING: LogState.LIVE,
    LogPhase.SEALED: LogState.PLAIN,
    LogPhase.UPLOADED: LogState.PLAIN,
    LogPhase.COMPACTED: LogState.COMPRESSED,
    LogPhase.EXPIRED: LogState.EXPIRED,
}
