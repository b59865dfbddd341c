"""What a search looks for: plain text or an RE2 regular expression, and its match spans.

Contract section 12: plain text is case-insensitive (``str.casefold`` on both
sides, as the per-run search); ``regex=true`` compiles ``q`` with RE2 (linear
time whatever the pattern, so no query can stall the server), case-sensitive
unless the pattern says ``(?i)``. Spans are in Unicode code points of the
message.

:meth:`Pattern.requirement` says which text a matching message must contain:
alternatives, each a list of literal strings that must all appear (casefolded).
The n-gram index uses it to skip frames; an empty answer means "cannot tell",
and the index is then not used. It must never claim a literal that a match
could lack (that would hide hits), so it is conservative:

- plain text: the casefolded query itself;
- a regex: literals read from Python's own parser of the pattern (RE2 syntax is
  nearly a subset), kept only where both engines surely agree: runs of ASCII
  characters (RE2's ``(?i)`` folds ``k`` with the Kelvin sign and ``s`` with
  long s, whose casefolds are ASCII ``k`` and ``s`` again); nothing under
  optional repeats; a pattern Python reads differently (``[[:alpha:]]``) or
  cannot read gives no requirement.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import re2

from runevents.exceptions import InvalidInput

#: longest query accepted (characters)
MAX_QUERY = 1000
#: at most this many alternatives are tracked (more: the requirement is dropped)
MAX_ALTERNATIVES = 16
#: RE2 memory budget for one compiled pattern (bytes): a bigger program is 422
RE2_MAX_MEM = 8 << 20

#: alternatives of conjunctions of literals; ``[]`` means no requirement is known
Requirement = list[list[str]]


class InvalidPattern(InvalidInput):
    """The search pattern is not a valid regular expression."""

    code = "invalid_regex"


@dataclass(frozen=True)
class Pattern:
    """A compiled search: :meth:`spans` finds the matches in one message."""

    query: str
    regex: bool
    _needle: str = field(init=False, repr=False)
    _re: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.query:
            raise InvalidInput("q must not be empty")
        if len(self.query) > MAX_QUERY:
            raise InvalidInput(f"q is longer than {MAX_QUERY} characters")
        object.__setattr__(self, "_needle", self.query.casefold())
        compiled = None
        if self.regex:
            options = re2.Options()
            options.max_mem = RE2_MAX_MEM
            options.log_errors = False
            try:
                compiled = re2.compile(self.query, options)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                raise InvalidPattern(f"invalid regular expression: {reason}") from None
        object.__setattr__(self, "_re", compiled)

    def spans(self, message: str) -> list[tuple[int, int]]:
        """Non-overlapping matches in ``message`` as ``(start, end)`` code points; [] if none."""
        if self._re is not None:
            out = []
            for m in self._re.finditer(message):
                start, end = m.span()
                if end > start:  # an empty match marks nothing
                    out.append((start, end))
            return out
        return _casefold_spans(message, self._needle)

    def requirement(self) -> Requirement:
        """Alternatives of literals (casefolded) a matching message must contain; [] = unknown."""
        if not self.regex:
            return [[self._needle]]
        return regex_requirement(self.query)

    @property
    def ascii_needle(self) -> bytes | None:
        """For plain text: the needle as lowercase bytes when a byte prefilter is exact.

        Printable ASCII without ``"`` or ``\\`` is written unescaped in the
        stored JSON; and only ASCII lines are prefiltered by bytes (casefolding
        other characters can yield ASCII: the Kelvin sign is ``k``).
        """
        if self.regex:
            return None
        needle = self._needle
        if not needle.isascii() or not needle.isprintable() or '"' in needle or "\\" in needle:
            return None
        return needle.encode()


def _casefold_spans(message: str, needle: str) -> list[tuple[int, int]]:
    folded = message.casefold()
    start = folded.find(needle)
    if start < 0:
        return []
    found = []
    while start >= 0:
        found.append((start, start + len(needle)))
        start = folded.find(needle, start + len(needle))
    if len(folded) == len(message):
        # casefold never shortens a character: equal lengths mean one to one
        return found
    # some characters fold to several (ß -> ss): map folded offsets back
    owner: list[int] = []
    for i, char in enumerate(message):
        owner.extend([i] * len(char.casefold()))
    return [(owner[a], owner[b - 1] + 1) for a, b in found]


# ---------------------------------------------------------------------------
# literals a regex requires


def regex_requirement(pattern: str) -> Requirement:
    """See the module doc; [] when nothing is known for sure."""
    if "[:" in pattern or "\\Q" in pattern or "\\p" in pattern or "\\P" in pattern:
        return []  # POSIX classes, quoting, Unicode classes: Python reads these differently
    try:
        from re import _parser  # type: ignore[attr-defined]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = _parser.parse(pattern)
    except Exception:
        return []
    try:
        alternatives = _sequence(list(parsed))
    except _Unknown:
        return []
    cleaned = [[lit.casefold() for lit in alt if len(lit) >= 3] for alt in alternatives]
    if not cleaned or any(not alt for alt in cleaned):
        return []  # some alternative requires nothing we can check
    return cleaned


class _Unknown(Exception):
    """The requirement grew too large to track."""


def _and(left: Requirement, right: Requirement) -> Requirement:
    product = [a + b for a in left for b in right]
    if len(product) > MAX_ALTERNATIVES:
        # keep the side with fewer alternatives (still a sound requirement)
        return left if len(left) <= len(right) else right
    return product


def _sequence(items: list[tuple[Any, Any]]) -> Requirement:
    """Requirement of a concatenation of parsed items."""
    from re import _constants as c  # type: ignore[attr-defined]

    result: Requirement = [[]]
    run: list[str] = []

    def flush() -> None:
        nonlocal result
        if run:
            result = _and(result, [["".join(run)]])
            run.clear()

    for op, arg in items:
        if op is c.LITERAL and arg < 128:
            run.append(chr(arg))
            continue
        flush()
        if op is c.SUBPATTERN:
            result = _and(result, _sequence(list(arg[-1])))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, _high, item = arg
            if low >= 1:
                result = _and(result, _sequence(list(item)))
        elif op is c.BRANCH:
            alternatives: Requirement = []
            for branch in arg[1]:
                alternatives.extend(_sequence(list(branch)))
            if len(alternatives) > MAX_ALTERNATIVES:
                raise _Unknown
            result = _and(result, alternatives)
        elif op is c.ATOMIC_GROUP if hasattr(c, "ATOMIC_GROUP") else False:
            result = _and(result, _sequence(list(arg)))
        # anything else (classes, anchors, any char, non-ASCII literals) requires nothing known
    flush()
    return result
