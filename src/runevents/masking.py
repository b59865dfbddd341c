"""Secret masking: a run's secret values never reach its log (contract section 11).

A :class:`Masker` belongs to one run. It knows the configuration's declared
secret values and the values the run added with ``::add-mask::VALUE``, and
replaces every occurrence -- of the value itself, its standard base64 form and
its percent-encoded form -- in every string of an event draft by ``***``
*before* the draft reaches a writer, so the value is never encoded into a log
line, a spool or quarantine file, a compressed frame, a summary, a snippet or
an SSE frame.

Why these forms: ``masking_forms.py`` (GitHub Actions masks the same ones).

What is masked: the draft's ``type``, ``source``, ``build_id`` and every
string of its payload (keys too). The contract's structure never is, because
it is not the run's data, and a value that happens to equal one of its words
(``::add-mask::failed``, ``::add-mask::stdout``, ``::add-mask::row_count``)
must not change how a run ends or is read:

* a ``type`` that is one of the contract's pinned event types
  (:data:`runevents.events.CONTRACT_TYPES`: ``run.completed``, ``console.line``...);
  any other type is masked like any string;
* the payload keys the contract pins for those types
  (:data:`runevents.events.PINNED_PAYLOAD_KEYS`, nested objects too: a
  console line's ``scope``/``stream``/``level``/``message``, a table summary's
  ``row_count``, ``validation.issues_total``...); their values are masked;
* a pinned enum's value when it is one of the contract's: a console line's
  ``scope``, ``stream`` and ``level``, ``run.completed``'s ``status``.

The same code masks an executed run's output and a producer's batch. In the
encoded-JSON pass a pinned key is written as ``0`` and an enum's kept value
left out (:func:`_pinned_form`), so no form can match them; the string walk
skips them the same way (:meth:`Masker.mask_pinned`).

Short ``::add-mask::`` values: one shorter than :data:`MIN_ADD_MASK_CHARS` is
not applied (it would mask letters all over the log), but its own line still
reads ``::add-mask::***``. Declared secrets need 8 characters
(:data:`~runevents.masking_forms.MIN_SECRET_CHARS`) because a bad configuration can be refused at
start-up; a job's value cannot be refused, so the bar is lower: a 6-character
PIN left in clear would be a leak. GitHub Actions applies any length; Azure
Pipelines and most maskers skip values under 4 to 6.

Overlapping values: the masked ranges are the union of every occurrence of
every form, overlaps joined into one ``***`` (secrets ``abcdefgh12`` and
``gh12ijklmnop`` in ``abcdefgh12ijklmnop`` leave nothing visible).

An ``::add-mask::VALUE`` line masks VALUE in its whole batch (the lines before
it too: none is written yet) and in every later one.

Counting: every draft whose strings had replacements carries the number in
``payload["masked"]`` (an int the server owns: a producer's own ``masked`` key
is dropped), and the run summary's ``console.masked`` sums them. So the summary
stays a pure function of the stored events.

Streaming: lines are masked whole, after the line splitter joined the writes
of the child that made them, so a secret split across two writes of one line is
masked. A value split across two *lines* is not (the contract leaves it out).

The search is Aho-Corasick (``ahocorasick-rs``). Text is first checked as
UTF-8 bytes by automatons of at most :attr:`Masker.GROUP` forms each (searched
with a SIMD prefilter, GB/s), and only strings known to hold a form go through
the replacing automaton of all forms, which reports overlapping occurrences.
The executor checks a child's raw reads this way
(``emitter.Emitter``); :meth:`Masker.mask_drafts` does it for a batch of drafts
by their JSON encoding (where the forms are searched as JSON escapes them).
One compiled regular expression of the same forms was measured ~250x slower
than the bytes check (``bench/bench_masking.py``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson
from ahocorasick_rs import AhoCorasick, BytesAhoCorasick, MatchKind

from runevents.events import (
    CONSOLE_LINE,
    CONTRACT_TYPES,
    PINNED_PAYLOAD_KEYS,
    EventDraft,
    PayloadSpec,
)
from runevents.masking_forms import encoded_forms
from runevents.masking_structure import from_pinned_form, kept_whole, maskable_parts

#: what a secret value is replaced with
MASK: Final = "***"
#: the workflow command (GitHub's syntax) that masks a value for the rest of the run
ADD_MASK: Final = "::add-mask::"
#: the same, as the bytes a child prints
ADD_MASK_BYTES: Final = ADD_MASK.encode()
# one-pattern automaton: a SIMD search, ~30x faster than ``bytes in bytes`` (measured)
_ADD_MASK_SEARCH: Final = BytesAhoCorasick([ADD_MASK_BYTES], matchkind=MatchKind.LeftmostLongest)


def has_add_mask(data: bytes) -> bool:
    """Whether ``data`` holds ``::add-mask::`` anywhere."""
    return bool(_ADD_MASK_SEARCH.find_matches_as_indexes(data))


#: the payload key counting replacements in one event (server-owned)
MASKED_KEY: Final = "masked"
#: shortest ``::add-mask::`` value applied: a shorter one (``e``, ``ab``) would mask
#: ordinary letters and words all over the log and hides nothing worth hiding; its
#: own line still shows ``***`` in its place. Not 8 like a declared secret (which
#: can be refused at start-up): a job's value cannot be refused, and a 6-character
#: PIN the job asked to hide left in clear would be a leak (see the module docstring)
MIN_ADD_MASK_CHARS: Final = 4


#: the ``masked`` key as JSON spells it without escapes
MASKED_KEY_JSON: Final = b'"masked"'
#: ``::add-mask::``, a ``"masked"`` key, and any JSON escape of one of their characters
#: (``\\u003a``...): a body without any of them cannot hold either once decoded
_MASK_ESCAPES: Final = sorted(
    {
        f"{prefix}{ord(char):04{case}}".encode()
        for char in set(ADD_MASK + MASKED_KEY)
        for prefix in ("\\u", "\\U")
        for case in "xX"
    }
)
_MASK_WORK: Final = BytesAhoCorasick(
    [ADD_MASK_BYTES, MASKED_KEY_JSON, *_MASK_ESCAPES], matchkind=MatchKind.LeftmostLongest
)


def nothing_to_mask(raw: bytes) -> bool:
    """True if the JSON ``raw`` cannot hold ``::add-mask::`` in any string nor a ``masked`` key.

    What an empty masker does to a batch is only that: apply the command, drop
    a producer's own count. One SIMD scan of the body instead of encoding the
    drafts; an escape of any character of either (``\\u003a``, ``\\u006D``) counts
    as holding it, so the answer is never a wrong True.
    """
    return not _MASK_WORK.find_matches_as_indexes(raw)


def add_mask_value(message: str) -> str | None:
    """The VALUE of a ``::add-mask::VALUE`` line (leading blanks allowed), else None."""
    if ADD_MASK not in message:
        return None
    text = message.lstrip()
    if not text.startswith(ADD_MASK):
        return None
    value = text[len(ADD_MASK) :].strip()
    return value or None


def _draft_add_mask(draft: EventDraft) -> str | None:
    """The value a draft's ``::add-mask::`` console line adds, else None."""
    if draft.type != CONSOLE_LINE:
        return None
    message = draft.payload.get("message")
    return add_mask_value(message) if isinstance(message, str) else None


def _merged(matches: Iterable[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The (start, end) ranges covered by overlapping ``matches``, overlaps joined.

    Leftmost-longest matching skips a form that overlaps an earlier match, so
    its tail would stay visible (``abcdefgh12`` and ``gh12ijklmnop`` in
    ``abcdefgh12ijklmnop``); the union of every occurrence leaves nothing.
    Ranges that only touch stay apart: each is a whole form already.
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted((start, end) for _, start, end in matches):
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _json_escaped(form: str) -> bytes:
    """``form`` as it appears between the quotes of an encoded JSON string."""
    return orjson.dumps(form)[1:-1]


def _groups(patterns: list[bytes], size: int) -> list[BytesAhoCorasick]:
    return [
        BytesAhoCorasick(patterns[i : i + size], matchkind=MatchKind.LeftmostLongest)
        for i in range(0, len(patterns), size)
    ]


class Masker:
    """One run's masking state: the values to mask and their automatons."""

    __slots__ = ("_bytes", "_forms", "_json", "_json_all", "_text", "_text_all", "_values")

    #: forms per *detecting* automaton: up to 64 patterns are searched with a SIMD
    #: prefilter (GB/s); past that the automaton runs without it, measured ~30x
    #: slower (bench/bench_masking.py), so the bytes check uses groups of 64. The
    #: replacing automaton (over str, only on strings known to hold a form) keeps
    #: every form in one automaton, reporting overlapping occurrences.
    GROUP = 64

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        self._forms: set[str] = set()
        #: the forms over str (replacing) and over UTF-8 bytes (the batch check)
        self._text: AhoCorasick | None = None
        #: every form, all overlapping occurrences (only for strings known to hold one)
        self._text_all: AhoCorasick | None = None
        self._bytes: list[BytesAhoCorasick] = []
        #: the forms as they appear inside a JSON string (escaped), for checking
        #: and replacing in encoded events: groups, and all in one automaton
        #: (overlapping occurrences, for replacing)
        self._json: list[BytesAhoCorasick] = []
        self._json_all: BytesAhoCorasick | None = None
        self.add(*values)

    @property
    def values(self) -> tuple[str, ...]:
        """The values masked so far (declared, then added), without duplicates."""
        return tuple(self._values)

    def __bool__(self) -> bool:
        return self._text is not None

    def add(self, *values: str) -> list[str]:
        """Mask ``values`` from now on; returns the ones that were new."""
        added = [v for v in dict.fromkeys(values) if v and v not in self._values]
        if not added:
            return []
        self._values.extend(added)
        for value in added:
            self._forms |= encoded_forms(value)
        forms = sorted(self._forms)
        self._text = AhoCorasick(forms, matchkind=MatchKind.LeftmostLongest)
        self._text_all = AhoCorasick(forms, matchkind=MatchKind.Standard)
        self._bytes = _groups([f.encode("utf-8", "surrogatepass") for f in forms], self.GROUP)
        escaped = sorted({_json_escaped(f) for f in forms})
        raw = [f.encode("utf-8", "surrogatepass") for f in forms]
        self._json = self._bytes if escaped == sorted(raw) else _groups(escaped, self.GROUP)
        self._json_all = BytesAhoCorasick(escaped, matchkind=MatchKind.Standard)
        return added

    def _text_matches(self, text: str) -> list[tuple[int, int]]:
        if self._text is None or self._text_all is None:
            return []
        if not self._text.find_matches_as_indexes(text):
            return []  # the common case: one leftmost-longest scan
        return _merged(self._text_all.find_matches_as_indexes(text, overlapping=True))

    # -- strings ----------------------------------------------------------------

    def byte_matches(self, data: bytes) -> list[tuple[int, int]]:
        """(start, end) byte offsets of forms found in ``data`` (UTF-8), per group.

        Enough to tell *which lines* hold a form (the replacing pass then finds
        every occurrence in them); not a replacement plan.
        """
        return [
            (start, end) for a in self._bytes for _, start, end in a.find_matches_as_indexes(data)
        ]

    def clean_bytes_only(self, data: bytes) -> bool:
        """True when ``data`` (UTF-8) holds no form to mask (``::add-mask::`` not looked at)."""
        return not any(a.find_matches_as_indexes(data) for a in self._bytes)

    def clean_bytes(self, data: bytes) -> bool:
        """True when ``data`` (UTF-8) holds no form to mask and no ``::add-mask::``."""
        return not has_add_mask(data) and self.clean_bytes_only(data)

    def mask_text(self, text: str) -> tuple[str, int]:
        """``text`` with every form replaced by ``***``, and the number of replacements."""
        matches = self._text_matches(text)
        if not matches:
            return text, 0
        parts: list[str] = []
        position = 0
        for start, end in matches:
            parts.append(text[position:start])
            parts.append(MASK)
            position = end
        parts.append(text[position:])
        return "".join(parts), len(matches)

    def mask_value(self, value: Any) -> tuple[Any, int]:
        """A JSON value with every string (dict keys too) masked; (value, replacements).

        Containers are rebuilt only when something in them changed.
        """
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            total = 0
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str):
                    key, n = self.mask_text(key)
                    total += n
                item, n = self.mask_value(item)
                total += n
                out[key] = item
            return (out, total) if total else (value, 0)
        if isinstance(value, list):
            total = 0
            items = []
            for item in value:
                item, n = self.mask_value(item)
                total += n
                items.append(item)
            return (items, total) if total else (value, 0)
        return value, 0

    # -- drafts -----------------------------------------------------------------

    def mask_drafts(
        self, drafts: Sequence[EventDraft], raw: bytes | None = None
    ) -> list[EventDraft]:
        """``drafts`` masked (payload keys and strings, type, source, build_id),
        ``::add-mask::`` applied.

        An ``::add-mask::VALUE`` console line masks VALUE in every event of the
        batch (earlier ones too: none is written yet) and of later batches.
        Drafts are changed in place (they are not shared); the same drafts are
        returned in a list.

        ``raw``: the JSON the drafts were decoded from (a producer's NDJSON
        body). With no value to mask yet, a body that cannot hold
        ``::add-mask::`` or a ``masked`` key (:func:`nothing_to_mask`) leaves
        every draft as it is, so it is returned without encoding the drafts.
        """
        out = list(drafts)
        if not out:
            return out
        if raw is not None and self._text is None and nothing_to_mask(raw):
            return out
        return self._mask_encoded(out)

    def _mask_encoded(self, drafts: list[EventDraft]) -> list[EventDraft]:
        """Mask a batch by its drafts' JSON: one encoding and one check for the
        batch, then one replacement per draft that holds a form.

        Walking every string of every event with the automaton was measured at
        ~40 us per structured event with 20 secrets (an automaton call per
        string, ~1.5 us each); the encoded batch costs one scan.
        """
        try:
            blob = orjson.dumps(
                [
                    ["" if d.type in CONTRACT_TYPES else d.type, d.source, d.build_id, d.payload]
                    for d in drafts
                ]
            )
        except (orjson.JSONEncodeError, TypeError):  # an int past 64 bits, say
            return self._mask_all(drafts)
        if has_add_mask(blob):
            return self._mask_all(drafts)
        for draft in drafts:
            draft.payload.pop(MASKED_KEY, None)  # the count is the server's
        if not any(a.find_matches_as_indexes(blob) for a in self._json):
            return drafts  # the common case: one encoding, one scan
        # which drafts: encode them one by one (a batch with a hit is the rare case)
        pieces = [orjson.dumps(maskable_parts(d)) for d in drafts]
        joined = b"\n".join(pieces)  # encoded JSON holds no raw newline
        ends = list(itertools.accumulate(len(piece) + 1 for piece in pieces))
        hits = {
            bisect.bisect_right(ends, start)
            for a in self._json
            for _, start, _ in a.find_matches_as_indexes(joined)
        }
        for index in sorted(hits):
            self._mask_json(drafts[index], pieces[index])
        return drafts

    def _mask_json(self, draft: EventDraft, piece: bytes) -> None:
        """Replace the (escaped) forms in ``piece``, the draft's JSON, and take it back."""
        assert self._json_all is not None
        matches = _merged(self._json_all.find_matches_as_indexes(piece, overlapping=True))
        parts: list[bytes] = []
        position = 0
        for start, end in matches:
            parts.append(piece[position:start])
            parts.append(b"***")
            position = end
        parts.append(piece[position:])
        try:
            kind, source, build_id, masked = orjson.loads(b"".join(parts))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            # a match that ran into the JSON's own syntax: walk the strings instead
            self._mask_draft(draft)
            return
        spec = PINNED_PAYLOAD_KEYS.get(draft.type)
        payload = masked if spec is None else from_pinned_form(masked, spec, draft.payload)
        if not isinstance(kind, str) or not isinstance(payload, dict):
            # (a pinned form whose shape changed: a match in its syntax, walk instead)
            self._mask_draft(draft)
            return
        if draft.type not in CONTRACT_TYPES:
            draft.type = kind
        draft.source, draft.build_id = source, build_id
        draft.payload.clear()
        draft.payload.update(payload)
        draft.payload.pop(MASKED_KEY, None)
        if matches:
            draft.payload[MASKED_KEY] = len(matches)

    def _mask_all(self, drafts: list[EventDraft]) -> list[EventDraft]:
        # two passes: the batch is written whole or not at all, so a value added
        # anywhere in it masks all of it (a line before the command included)
        values = [value for value in map(_draft_add_mask, drafts) if value is not None]
        self.add(*filter(add_mask_applies, values))
        for draft in drafts:
            self._mask_draft(draft)
        return drafts

    def _mask_draft(self, draft: EventDraft) -> None:
        payload = draft.payload
        # the count is the server's: a producer cannot claim replacements
        payload.pop(MASKED_KEY, None)
        total = 0
        value = _draft_add_mask(draft)
        if value is not None:
            if add_mask_applies(value):
                self.add(value)
            else:
                # too short to mask the log with; its own line still hides it
                payload["message"] = _hide_add_mask(payload["message"])
                total += 1
        if self._text is None:
            if total:
                payload[MASKED_KEY] = total
            return
        if draft.type not in CONTRACT_TYPES:
            draft.type, n = self.mask_text(draft.type)
            total += n
        if draft.source is not None:
            draft.source, n = self.mask_text(draft.source)
            total += n
        if draft.build_id is not None:
            draft.build_id, n = self.mask_text(draft.build_id)
            total += n
        spec = PINNED_PAYLOAD_KEYS.get(draft.type)
        if spec is None:
            masked, n = self.mask_value(payload)
        else:
            masked, n = self.mask_pinned(payload, spec)
        total += n
        if n:
            payload.clear()
            payload.update(masked)
        if total:
            payload[MASKED_KEY] = total

    def mask_pinned(self, value: dict[str, Any], spec: PayloadSpec) -> tuple[dict[str, Any], int]:
        """``value`` masked like :meth:`mask_value`, but the keys ``spec`` pins (the
        contract's structure, ``events.PINNED_PAYLOAD_KEYS``) stay as they are, and
        so does a pinned enum's value (``stream: "stdout"``). Their other values,
        and every other key and value, are masked."""
        total = 0
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key not in spec:
                if isinstance(key, str):
                    key, n = self.mask_text(key)
                    total += n
                item, n = self.mask_value(item)
            else:
                pin = spec[key]
                if kept_whole(pin, item):
                    n = 0
                elif isinstance(pin, dict) and isinstance(item, dict):
                    item, n = self.mask_pinned(item, pin)
                else:
                    item, n = self.mask_value(item)
            total += n
            out[key] = item
        return (out, total) if total else (value, 0)


def add_mask_applies(value: str) -> bool:
    """Whether an ``::add-mask::`` value is long enough to be masked from now on."""
    return len(value) >= MIN_ADD_MASK_CHARS


def _hide_add_mask(message: str) -> str:
    """An ``::add-mask::VALUE`` line with its value replaced by ``***``."""
    return message[: message.index(ADD_MASK) + len(ADD_MASK)] + MASK
