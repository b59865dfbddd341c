"""The summary's ``tables`` and ``validation`` state, in bounded memory (contract 2.1).

**Validation sums** (:class:`ValidationSums`) fold blocks or single issues into
capped maps (the 1,000 smallest keys kept exactly, the rest counted), plus the
exact sums of the four ranked severities, so ``max_severity`` never depends on
which keys were cut.

**Tables** (:class:`Tables`): "a later summary of the same table replaces the
earlier one" needs each table's last summary, which is unbounded. So:

- the first :data:`MAX_TRACKED_TABLES` distinct ``table_id``\\ s (in log order),
  holding together at most :data:`TRACKED_COST` entries of validation maps, are
  *tracked*: their last summary is kept and replacement is exact;
- a summary of any other table is *folded* into running sums as one more table
  (a table count, rows, its file's entry, its validation block) and forgotten.

This is exact whenever every table beyond the tracked window is summarized once
(the usual producer, and any run with at most 2,048 tables). A table beyond
the window summarized twice counts twice. A tracked table whose replacement no
longer fits the budget leaves the window: its old summary is subtracted and the
new one folded, so counts stay exact at that moment. Files and validation keys
are counted with :class:`~runevents.summary.bounds.CappedMap`, exact up to
16,384 cut keys each, estimated past that.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import Any

from runevents.summary.bounds import MAX_ENTRIES, MAX_NAME_CHARS, CappedMap, Counts, name_key
from runevents.summary.telemetry import SEVERITY_RANK, Validation, clamp, max_severity

#: tables whose last summary is kept (so a later summary replaces it exactly)
MAX_TRACKED_TABLES = 2048
#: validation map entries the tracked tables may hold together (one more per table)
TRACKED_COST = 8192


class ValidationSums:
    """Sums of validation blocks or issues: ``issues_total``, capped maps, ``max_severity``."""

    __slots__ = ("blocks", "by_code", "by_severity", "declared", "ranked", "total")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.total = 0
        self.by_severity = Counts(max_entries)
        self.by_code = Counts(max_entries)
        #: exact sums of the ranked severities, whether or not their keys were cut
        self.ranked: dict[str, int] = {}
        #: producers' own max_severity of blocks without issues_by_severity (ranked only)
        self.declared: set[str] = set()
        #: blocks folded in
        self.blocks = 0

    def add_block(self, block: Validation) -> None:
        """Fold one validation block (a table's, or a run.validation.summary) from keyed_block."""
        self.blocks += 1
        self.total += block.issues_total
        if block.by_severity is None:
            if block.declared_max in SEVERITY_RANK:
                self.declared.add(block.declared_max)
        else:
            for name, n in block.by_severity.items():
                self._add_severity(name, n)
        for code, n in block.by_code.items():
            self.by_code.add(code, n)

    def add_issue(self, severity: str, code: str) -> None:
        """Fold one run.validation.issue."""
        self.total += 1
        self._add_severity(name_key(severity), 1)
        self.by_code.add_name(code)

    def _add_severity(self, name: str, n: int) -> None:
        """Count severity ``name`` (a key: see name_key; the ranked names are their own keys)."""
        if name in SEVERITY_RANK:
            self.ranked[name] = self.ranked.get(name, 0) + n
        self.by_severity.add(name, n)

    def copy(self) -> ValidationSums:
        """An independent copy."""
        twin = copy.copy(self)  # the scalars; the containers are replaced below
        twin.total = self.total
        twin.by_severity = self.by_severity.copy()
        twin.by_code = self.by_code.copy()
        twin.ranked = dict(self.ranked)
        twin.declared = set(self.declared)
        twin.blocks = self.blocks
        return twin

    def output(self, truncated: dict[str, int]) -> dict[str, Any]:
        """The summary's ``validation`` object; cut map entries are added to ``truncated``."""
        for path, counts in (
            ("validation.issues_by_severity", self.by_severity),
            ("validation.issues_by_code", self.by_code),
        ):
            cut = counts.cut()
            if cut:
                truncated[path] = cut
        return {
            "issues_total": clamp(self.total),
            "issues_by_severity": self.by_severity.as_dict(),
            "issues_by_code": self.by_code.as_dict(),
            "max_severity": max_severity(self.ranked, sorted(self.declared)),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class _Table:
    source_file: str
    row_count: int | None
    validation: Validation | None
    #: what it takes of TRACKED_COST
    cost: int


def _table_key(table_id: str) -> str | bytes:
    # A long id is kept as a digest: memory stays bounded and ids stay distinct.
    if len(table_id) <= MAX_NAME_CHARS:
        return table_id
    return hashlib.blake2b(table_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _keyed_counts(counts: dict[str, int]) -> dict[str, int]:
    if all(name_key(name) is name for name in counts):
        return counts  # every name is its own key (name_key returns it unchanged)
    keyed: dict[str, int] = {}
    for name, n in counts.items():
        key = name_key(name)
        # distinct names, distinct keys: sums nothing, except names that differ only in
        # what storable() replaces (``a\x00`` and ``a\ufffd``), one key as the row shows
        keyed[key] = keyed.get(key, 0) + n
    return keyed


def keyed_block(block: Validation) -> Validation:
    """``block`` with its names replaced by their keys (bounds.name_key), as add_block wants.

    Keys are at most MAX_NAME_CHARS characters, so a kept block's size is bounded,
    and distinct names keep distinct keys. Apply it once: a key is not its own key.
    """
    by_severity = None if block.by_severity is None else _keyed_counts(block.by_severity)
    by_code = _keyed_counts(block.by_code)
    if by_severity is block.by_severity and by_code is block.by_code:
        return block
    return dataclasses.replace(block, by_severity=by_severity, by_code=by_code)


#: a file's running entry: [table_count, row_count sum, 1 if any row_count is null, issues_total]
_FileSums = list[int]


def _new_file() -> _FileSums:
    return [0, 0, 0, 0]


class Tables:
    """The ``tables`` section and the tables' validation sums (rules in the module docstring)."""

    __slots__ = ("_cost", "_files", "_folded", "_rows", "_rows_null", "_tracked", "_validation")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._tracked: dict[str | bytes, _Table] = {}
        self._cost = 0
        #: summaries folded outside the tracked window, one table each
        self._folded = 0
        self._rows = 0
        self._rows_null = False
        self._files: CappedMap[_FileSums] = CappedMap(max_entries, list.copy)
        self._validation = ValidationSums(max_entries)

    def add(
        self, table_id: str, source_file: str, row_count: int | None, block: Validation | None
    ) -> None:
        """Fold one run.table.summary (fields already type-checked)."""
        cost = 1
        if block is not None:
            block = keyed_block(block)
            cost += len(block.by_code) + len(block.by_severity or ())
        table = _Table(name_key(source_file), row_count, block, cost)
        key = _table_key(table_id)
        tracked = self._tracked
        old = tracked.get(key)
        if old is not None:
            if self._cost - old.cost + cost <= TRACKED_COST:
                tracked[key] = table
                self._cost += cost - old.cost
                return
            del tracked[key]  # leaves the window; the new summary is folded below
            self._cost -= old.cost
        elif len(tracked) < MAX_TRACKED_TABLES and self._cost + cost <= TRACKED_COST:
            tracked[key] = table
            self._cost += cost
            return
        self._fold(table, self._files, self._validation)
        self._folded += 1
        if row_count is None:
            self._rows_null = True
        else:
            self._rows += row_count

    @staticmethod
    def _fold(
        table: _Table, files: CappedMap[_FileSums], validation: ValidationSums | None
    ) -> None:
        entry = files.slot(table.source_file, _new_file)
        if entry is not None:
            entry[0] += 1
            if table.row_count is None:
                entry[2] = 1
            else:
                entry[1] += table.row_count
            if table.validation is not None:
                entry[3] += table.validation.issues_total
        if table.validation is not None and validation is not None:
            validation.add_block(table.validation)

    def copy(self) -> Tables:
        """An independent copy (tracked tables are immutable, so shared)."""
        twin = copy.copy(self)  # the scalars; the containers are replaced below
        twin._tracked = dict(self._tracked)
        twin._cost = self._cost
        twin._folded = self._folded
        twin._rows = self._rows
        twin._rows_null = self._rows_null
        twin._files = self._files.copy()
        twin._validation = self._validation.copy()
        return twin

    def output(
        self, truncated: dict[str, int], *, with_validation: bool = True
    ) -> tuple[dict[str, Any], ValidationSums | None]:
        """The ``tables`` object, and the tables' validation sums (None if no table had a block).

        ``with_validation=False`` skips summing the blocks (a run.validation.summary wins anyway).
        """
        files = self._files.copy()
        validation = self._validation.copy() if with_validation else None
        rows, rows_null = self._rows, self._rows_null
        for table in self._tracked.values():
            self._fold(table, files, validation)
            if table.row_count is None:
                rows_null = True
            else:
                rows += table.row_count
        cut = files.cut()
        if cut:
            truncated["tables.by_file"] = cut
        tables = {
            "input_file_count": files.distinct(),
            "table_count": len(self._tracked) + self._folded,
            # sums are exact here and shown saturated: the row's row_count is a BIGINT
            "row_count": None if rows_null else clamp(rows),
            "by_file": [
                {
                    "source_file": source_file,
                    "table_count": entry[0],
                    "row_count": None if entry[2] else clamp(entry[1]),
                    "issues_total": clamp(entry[3]),
                }
                for source_file, entry in files.items()
            ],
        }
        return tables, validation if validation is not None and validation.blocks else None
