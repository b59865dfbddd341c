"""The summary's ``phases`` list, capped at its first starts in bounded memory (contract 2.1).

One entry per phase start, in order; only the first ``max_entries`` starts are
kept, and ``cut()`` counts the others exactly. Matching stays exact past the
cap: a completed event closes the latest still-open start of its scope and
name, and every start past the cap is later than every kept one, so for a
name with kept open starts a counter of its open starts past the cap says
whether a completion closes one of those (no entry changes) or a kept one.
Names without kept open starts need no memory at all. A kept start that is
never completed runs to the next start of its scope, which may be past the
cap: that time is recorded as the start arrives.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

from runevents.summary.bounds import MAX_ENTRIES, cap_str, name_key
from runevents.summary.telemetry import duration_ms


@dataclasses.dataclass(slots=True)
class _Phase:
    scope: str
    phase: str
    started_at: str | None
    completed: bool = False
    completed_at: str | None = None
    status: str | None = None
    duration_ms: int | None = None
    #: the next start of the same scope was seen (its created_at is next_start)
    has_next: bool = False
    next_start: str | None = None


class Phases:
    """Phase starts and completions folded in log order (names already type-checked)."""

    __slots__ = ("_awaiting_next", "_kept", "_max_entries", "_open", "_open_cut", "_starts")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        #: the first max_entries starts; _starts counts all of them
        self._kept: list[_Phase] = []
        self._starts = 0
        #: (scope, phase) -> indexes into _kept of starts not yet completed
        self._open: dict[tuple[str, str], list[int]] = {}
        #: (scope, phase) -> open starts past the cap, later than that key's kept ones
        self._open_cut: dict[tuple[str, str], int] = {}
        #: scope -> index of its latest kept start (waiting for the next start of the scope)
        self._awaiting_next: dict[str, int] = {}

    def start(self, scope: str, name: str, created_at: str | None) -> None:
        """A phase start (``name`` is keyed here with name_key: distinct names stay distinct)."""
        name = name_key(name)
        self._starts += 1
        # This start ends the "time to the next start of the same scope" of the previous one.
        previous = self._awaiting_next.pop(scope, None)
        if previous is not None:
            waiting = self._kept[previous]
            waiting.has_next = True
            waiting.next_start = created_at
        key = (scope, name)
        if len(self._kept) < self._max_entries:
            index = len(self._kept)
            self._kept.append(_Phase(scope, name, created_at))
            self._open.setdefault(key, []).append(index)
            self._awaiting_next[scope] = index
        elif key in self._open:
            self._open_cut[key] = self._open_cut.get(key, 0) + 1

    def complete(
        self,
        scope: str,
        name: str,
        created_at: str | None,
        status: str | None,
        duration: int | None,
    ) -> None:
        """A phase completion: closes the latest open start of the same scope and name."""
        key = (scope, name_key(name))
        cut_open = self._open_cut.get(key)
        if cut_open:
            self._open_cut[key] = cut_open - 1  # closes a start past the cap: no entry to update
            return
        open_starts = self._open.get(key)
        if not open_starts:
            return  # a completion without a start adds no entry
        phase = self._kept[open_starts.pop()]
        if not open_starts:
            del self._open[key]
            self._open_cut.pop(key, None)
        phase.completed = True
        phase.completed_at = created_at
        phase.status = None if status is None else cap_str(status)
        phase.duration_ms = duration

    def cut(self) -> int:
        """Starts past the cap (exact)."""
        return self._starts - len(self._kept)

    def copy(self) -> Phases:
        """An independent copy (O(kept starts))."""
        twin = copy.copy(self)  # the scalars; the containers are replaced below
        twin._kept = [copy.copy(phase) for phase in self._kept]
        twin._open = {key: list(starts) for key, starts in self._open.items()}
        twin._open_cut = dict(self._open_cut)
        twin._awaiting_next = dict(self._awaiting_next)
        return twin

    def entries(self, run_end: str | None) -> Iterator[dict[str, Any]]:
        """The kept entries, in start order; ``run_end`` is run.completed's created_at."""
        for phase in self._kept:
            if phase.completed:
                duration = phase.duration_ms
                if duration is None:
                    duration = duration_ms(phase.started_at, phase.completed_at)
            else:
                # Until the next start of the same scope, else the run's end.
                end = phase.next_start if phase.has_next else run_end
                duration = duration_ms(phase.started_at, end)
            yield {
                "scope": phase.scope,
                "phase": phase.phase,
                "status": phase.status,
                "duration_ms": duration,
            }
