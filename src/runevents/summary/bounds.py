"""Bounded building blocks of the run summary (contract 2.1: at most 256 KiB, caps, ``truncated``).

- :func:`storable` replaces what the run row cannot store (U+0000) in every
  string the summary keeps, the way the row would (``db/rows.py``), so the
  summary in the row and in the log is one object.
- :func:`bounded_block` keeps a run.completed ``failure`` / ``execution`` as sent
  when small, else only its pinned keys, strings capped.
- :func:`cap_str` cuts a producer string to a fixed number of characters (for
  values: a message, a status, a failure's code; never for a key).
- :func:`name_key` is the key a producer's *name* is counted and shown under
  (type, stream, level, phase, code, severity, source_file): the name itself up
  to :data:`MAX_NAME_CHARS` characters; a longer one is shown as its first
  :data:`NAME_HEAD_CHARS` characters, ``…`` and 16 hex digits of its
  :func:`stable_hash`, still MAX_NAME_CHARS characters. So the key is a function
  of the *whole* name: names sharing a long prefix stay distinct keys (counted
  apart, one entry each), and a kept entry holds at most MAX_NAME_CHARS
  characters whatever the name's length. A name that is itself spelled like a
  shown form (MAX_NAME_CHARS characters with ``…`` where the hash starts) is
  shown in that form too, with its own hash, so it never merges with the name
  whose shown form it copies: two names share a key only if they share their
  first NAME_HEAD_CHARS characters *and* their 64-bit hash (odds about 5e-20 a
  pair; the same identity :class:`DistinctCounter` uses). Names used as keys are
  never cut with :func:`cap_str`: that would merge names sharing a long prefix.
- :class:`DistinctCounter` counts distinct keys in bounded memory: exactly up to
  :data:`EXACT_DISTINCT` keys (a set of 64-bit hashes), then as a HyperLogLog
  estimate (2**16 one-byte registers, about 0.4 % standard error).
- :class:`CappedMap` keeps the :data:`MAX_ENTRIES` smallest keys (the summary's
  maps and ``by_file`` are sorted by key, so these are "its first entries in the
  order the summary lists them") with their exact values, and counts the other
  keys with a :class:`DistinctCounter`.

Every structure's state is a function of the *set* of keys it was given (and
the values folded into the kept ones), never of the order or batching, so a
summary built from a log equals one folded live. A name's key depends on that
name alone (:func:`name_key`), so this holds for the set of names too, and the
order the summary lists a map in (sorted by key) is well defined. Hashes are blake2b, not
Python's per-process randomized ``hash()``, so another process gets the same
estimate.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import heapq
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, Generic, Self, TypeVar

import msgspec

from runevents.summary.telemetry import clamp

#: entries a list or map of the summary keeps at most (contract 2.1: "at most 1,000")
MAX_ENTRIES = 1000
#: characters of a name read from a producer as shown in the summary (a key: phase, code,
#: severity, type, stream, level, source_file, see name_key; a value: status, stage, code
#: of a failure, see cap_str); a longer one is shown cut
MAX_NAME_CHARS = 256
#: characters of a long name its shown form keeps before ``…`` and the 16 hex digits of its hash
NAME_HEAD_CHARS = MAX_NAME_CHARS - 17
#: characters kept of a message (failure / run.error ``message``)
MAX_MESSAGE_CHARS = 4096
#: what replaces the cut tail of a capped string
ELLIPSIS = "\u2026"
#: distinct keys a DistinctCounter counts exactly (~40 bytes each) before it estimates
EXACT_DISTINCT = 16_384
#: HyperLogLog precision: 2**16 registers (64 KiB); linear counting covers up to ~160k keys
_HLL_BITS = 16
_HLL_M = 1 << _HLL_BITS
_HLL_REST = 64 - _HLL_BITS

V = TypeVar("V")


def storable(text: str) -> str:
    """``text`` with every U+0000 replaced by U+FFFD (``text`` itself when it has none).

    The row stores the summary as Postgres jsonb / text, which cannot hold U+0000,
    so ``db/rows.scrub`` replaces it there with U+FFFD (on SQLite too, so both
    backends agree). Left in the summary, the stored ``run.completed`` (whose
    JSON keeps ``\\u0000``) and the row would hold two different objects
    (contract 2.1: the same one). Replaced here, as each string enters the
    summary, both hold the replaced form; names are keyed by it too, so kept
    maps stay sorted by their shown keys and scrubbing never merges two keys.
    (Lone surrogates, which the row also replaces, never reach a log: its JSON
    encoder refuses them.)
    """
    if "\x00" in text:
        return text.replace("\x00", "\ufffd")
    return text


def storable_value(value: Any) -> Any:
    """A copy of a JSON value with :func:`storable` applied to every string and key."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_value(k): storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_value(v) for v in value]
    return value


def cap_str(value: str, limit: int = MAX_NAME_CHARS) -> str:
    """``value`` if it has at most ``limit`` characters, else its first ``limit - 1`` and ``…``
    (made :func:`storable` first)."""
    value = storable(value)
    if len(value) <= limit:
        return value
    return value[: limit - 1] + ELLIPSIS


#: a run.completed ``failure`` / ``execution`` is kept as sent up to this many bytes of JSON
KEEP_AS_SENT_BYTES = 4096


def _capped_value(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return cap_str(value, limit)
    if value is None or isinstance(value, bool | int | float):
        return value
    return None  # a nested object in an oversized block: dropped


def bounded_block(block: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """``block`` as sent if small, else only its pinned ``keys`` with strings capped.

    A ``block`` that is not an object (``"failure": "boom"``) is read as absent: the
    rest of run.completed -- its status, its instant -- still counts (contract 2.1:
    the summary's status is the payload's), where a Malformed would drop it all.
    """
    if not isinstance(block, dict):
        return None
    try:
        small = json_size(block) <= KEEP_AS_SENT_BYTES
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        small = False  # not JSON (an in-process caller's object): keep the pinned keys
    if small:
        kept: dict[str, Any] = storable_value(block)  # a copy, strings as the row stores them
        return kept
    limit = {"message": MAX_MESSAGE_CHARS}
    return {key: _capped_value(block.get(key), limit.get(key, 256)) for key in keys}


def name_key(name: str) -> str:
    """The key ``name`` is counted, kept and shown under: distinct names, distinct keys.

    ``name`` itself when it has fewer than :data:`MAX_NAME_CHARS` characters (or
    exactly that many and is not spelled like a shown form); else its first
    :data:`NAME_HEAD_CHARS` characters, ``…`` and 16 lowercase hex digits of
    :func:`stable_hash` of the whole name (MAX_NAME_CHARS characters). Not
    idempotent by design: a shown form sent as a name gets a key of its own.
    A name shorter than MAX_NAME_CHARS without U+0000 is
    always its own key, so a lookup of such a raw name among kept keys is exact
    (the builders' fast paths); a name holding one is keyed by its :func:`storable`
    form (no kept key holds U+0000, so its raw lookup always misses).
    """
    name = storable(name)
    size = len(name)
    if size < MAX_NAME_CHARS or (size == MAX_NAME_CHARS and name[NAME_HEAD_CHARS] != ELLIPSIS):
        return name
    return f"{name[:NAME_HEAD_CHARS]}{ELLIPSIS}{stable_hash(name):016x}"


def is_shown_form(key: str) -> bool:
    """True if ``key`` is spelled like name_key's form of a long name (so not its own key)."""
    return len(key) == MAX_NAME_CHARS and key[NAME_HEAD_CHARS] == ELLIPSIS


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (unlike ``hash()``)."""
    data = key.encode("utf-8", "surrogatepass")  # a str may hold a lone surrogate
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class DistinctCounter:
    """How many distinct keys were added, in bounded memory (at most ~1.2 MB, then 64 KiB).

    Exact while at most :data:`EXACT_DISTINCT` distinct keys were added (two
    keys colliding on 64 bits is the only error: odds about 1e-11 at that
    size); past it the set is folded into HyperLogLog registers and
    :meth:`count` is an estimate, never below ``EXACT_DISTINCT + 1``.
    """

    __slots__ = ("_exact", "_exact_limit", "_registers")

    def __init__(self, exact_limit: int = EXACT_DISTINCT) -> None:
        self._exact_limit = exact_limit
        self._exact: set[int] | None = set()
        self._registers: bytearray | None = None

    def add(self, key: str) -> None:
        """Count ``key`` (adding it again changes nothing)."""
        digest = stable_hash(key)
        exact = self._exact
        if exact is not None:
            exact.add(digest)
            if len(exact) > self._exact_limit:
                self._to_registers(exact)
        else:
            self._register(digest)

    def _to_registers(self, exact: set[int]) -> None:
        self._registers = bytearray(_HLL_M)
        self._exact = None
        for digest in exact:
            self._register(digest)

    def _register(self, digest: int) -> None:
        registers = self._registers
        assert registers is not None
        index = digest >> _HLL_REST
        rank = _HLL_REST - (digest & ((1 << _HLL_REST) - 1)).bit_length() + 1
        if registers[index] < rank:
            registers[index] = rank

    @property
    def exact(self) -> bool:
        """True while :meth:`count` is exact."""
        return self._exact is not None

    def count(self) -> int:
        """The number of distinct keys added (an estimate once past EXACT_DISTINCT)."""
        if self._exact is not None:
            return len(self._exact)
        registers = self._registers
        assert registers is not None
        # bytearray.count runs in C: 50 passes over 64 KiB beat one Python loop.
        harmonic = sum(registers.count(r) * 2.0**-r for r in range(_HLL_REST + 2))
        alpha = 0.7213 / (1 + 1.079 / _HLL_M)
        estimate = alpha * _HLL_M * _HLL_M / harmonic
        zeros = registers.count(0)
        if estimate <= 2.5 * _HLL_M and zeros:
            estimate = _HLL_M * math.log(_HLL_M / zeros)  # linear counting: small range
        return max(round(estimate), self._exact_limit + 1)

    def copy(self) -> DistinctCounter:
        """An independent copy."""
        twin = DistinctCounter(self._exact_limit)
        twin._exact = None if self._exact is None else set(self._exact)
        twin._registers = None if self._registers is None else bytearray(self._registers)
        return twin


class CappedMap(Generic[V]):
    """The ``cap`` smallest keys with their values, plus a count of every other key.

    Exact for the kept keys: the kept set only ever loses its largest key, and a
    key among the ``cap`` smallest of all keys is among the ``cap`` smallest of
    any subset, so it is admitted on its first occurrence and never evicted.
    ``cut()`` is how many distinct keys are not kept (see DistinctCounter).
    Values are owned by the map; ``copy`` copies them with ``copy_value``.

    Keys are name_key's: a kept key spelled like a long name's shown form
    (:func:`is_shown_form`) is held apart from :attr:`kept`, so ``kept`` holds
    only names that are their own key and a lookup of a *raw* name there is exact
    (a hit is that very name): the builders' fast paths look a raw name up in
    ``kept`` and call :meth:`Counts.add_name` on a miss.
    """

    __slots__ = ("_cap", "_copy_value", "_cut", "_order", "_shown", "kept")

    def __init__(self, cap: int = MAX_ENTRIES, copy_value: Callable[[V], V] | None = None) -> None:
        self._cap = cap
        self._copy_value = copy_value
        #: key -> value of the kept keys that are names themselves (read it directly for a
        #: fast hit, also with a raw name)
        self.kept: dict[str, V] = {}
        #: key -> value of the kept keys that are long names' shown forms
        self._shown: dict[str, V] = {}
        #: the kept keys, sorted (so the largest is evicted in O(1) and listed in order)
        self._order: list[str] = []
        self._cut = DistinctCounter()

    def _store(self, key: str) -> dict[str, V]:
        """The dict that holds ``key``'s value when it is kept."""
        return self._shown if is_shown_form(key) else self.kept

    def admit(self, key: str) -> bool:
        """Make room for ``key`` (not yet kept): True if the caller must now store its value."""
        order = self._order
        if len(order) < self._cap:
            bisect.insort(order, key)
            return True
        if not order or key > order[-1]:
            self._cut.add(key)
            return False
        evicted = order.pop()
        del self._store(evicted)[evicted]
        self._cut.add(evicted)
        bisect.insort(order, key)
        return True

    def slot(self, key: str, make: Callable[[], V]) -> V | None:
        """The kept value of ``key`` (made by ``make`` on first sight), None if ``key`` is cut."""
        store = self._store(key)
        value = store.get(key)
        if value is None and self.admit(key):
            value = store[key] = make()
        return value

    def items(self) -> Iterator[tuple[str, V]]:
        """The kept entries in key order."""
        kept = self.kept
        shown = self._shown
        for key in self._order:
            value = kept.get(key)
            yield key, shown[key] if value is None else value

    def cut(self) -> int:
        """Distinct keys not kept (an estimate past EXACT_DISTINCT of them)."""
        return self._cut.count()

    def distinct(self) -> int:
        """Distinct keys seen, kept or not."""
        return len(self._order) + self._cut.count()

    def copy(self) -> Self:
        """An independent copy (values copied with ``copy_value``, shared if it is None)."""
        twin = copy.copy(self)  # same class and cap; the containers are replaced below
        copy_value = self._copy_value
        if copy_value is None:
            twin.kept = dict(self.kept)
            twin._shown = dict(self._shown)
        else:
            twin.kept = {key: copy_value(value) for key, value in self.kept.items()}
            twin._shown = {key: copy_value(value) for key, value in self._shown.items()}
        twin._order = list(self._order)
        twin._cut = self._cut.copy()
        return twin


class Counts(CappedMap[int]):
    """A CappedMap of integer counts."""

    __slots__ = ()

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``key``'s count (``key`` must already be a key: see name_key)."""
        store = self._store(key)
        if key in store:
            store[key] += n
        elif self.admit(key):
            store[key] = n

    def add_name(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the count of the producer's name ``name`` (keyed with name_key)."""
        self.add(name_key(name), n)

    def as_dict(self) -> dict[str, int]:
        """The kept counts, sorted by key (a count past the row's 64-bit range saturates)."""
        return {key: clamp(n) for key, n in self.items()}


# -- the final guard: the encoded size ----------------------------------------------

#: the contract's bound on a summary, as compact UTF-8 JSON
MAX_SUMMARY_BYTES = 256 * 1024
#: the summary's lists and maps as dotted paths, in the order ties are broken
CAPPED_FIELDS = (
    "events.by_type",
    "console.by_stream",
    "console.by_level",
    "phases",
    "tables.by_file",
    "validation.issues_by_severity",
    "validation.issues_by_code",
)
#: bytes kept free for the ``truncated`` entries the guard itself adds
_GUARD_SLACK = 64 * len(CAPPED_FIELDS)
_ENCODER = msgspec.json.Encoder()


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (a lone surrogate counts 3, as U+FFFD does)."""
    try:
        return len(_ENCODER.encode(value))
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return len(text.encode("utf-8", "surrogatepass"))


def _container(summary: dict[str, Any], path: str) -> Any:
    head, _, tail = path.partition(".")
    value = summary.get(head)
    return value.get(tail) if tail and isinstance(value, dict) else value


def fit_summary(summary: dict[str, Any], limit: int = MAX_SUMMARY_BYTES) -> dict[str, Any]:
    """Cut the ends of ``summary``'s lists and maps until it encodes in ``limit`` bytes.

    The per-list caps bound the entry count, but not the bytes (1,000 entries of
    256-character names can exceed 256 KiB), so this measures. While too big,
    the list or map taking the most bytes loses its last entry (ties: the order
    of CAPPED_FIELDS), so no single field starves the others; what is cut is
    added to ``summary["truncated"]``. Deterministic: same summary, same cut.
    The rest of the summary is small by construction (strings are capped), so
    emptying the lists always fits. Mutates and returns ``summary``.
    """
    size = json_size(summary)
    if size <= limit:
        return summary
    entry_sizes: dict[str, list[int]] = {}
    for path in CAPPED_FIELDS:
        value = _container(summary, path)
        if isinstance(value, list):
            entry_sizes[path] = [json_size(item) + 1 for item in value]
        elif isinstance(value, dict):
            entry_sizes[path] = [json_size(k) + json_size(v) + 2 for k, v in value.items()]
    cut = dict.fromkeys(entry_sizes, 0)
    excess = size - limit + _GUARD_SLACK
    order = {path: i for i, path in enumerate(CAPPED_FIELDS)}
    # A heap of (-bytes, tie-break, path): the biggest field is on top.
    heap = [(-sum(sizes), order[path], path) for path, sizes in entry_sizes.items() if sizes]
    heapq.heapify(heap)
    while excess > 0:
        if not heap:
            raise AssertionError("a summary with empty lists exceeds its bound")  # by design, never
        negative_total, tie, path = heapq.heappop(heap)
        sizes = entry_sizes[path]
        cut[path] += 1
        removed = sizes[len(sizes) - cut[path]]
        excess -= removed
        if cut[path] < len(sizes):
            heapq.heappush(heap, (negative_total + removed, tie, path))
    truncated: dict[str, int] = dict(summary.get("truncated") or {})
    for path, n in cut.items():
        if not n:
            continue
        value = _container(summary, path)
        head, _, tail = path.partition(".")
        if isinstance(value, list):
            kept: Any = value[: len(value) - n]
        else:
            kept = dict(list(value.items())[: len(value) - n])
        if tail:
            summary[head][tail] = kept
        else:
            summary[head] = kept
        truncated[path] = truncated.get(path, 0) + n
    summary["truncated"] = dict(sorted(truncated.items()))
    return fit_summary(summary, limit)  # one more measure; cuts again only if slack was short
