"""What masking never rewrites: the contract's structure (contract sections 2, 2.1, 11).

A secret or an ``::add-mask::`` value is replaced wherever it appears, except
where replacing it would change the shape the contract pins: a contract event
type, the payload keys the contract fixes for it (nested ones included) and
the values of its enums (a console line's ``scope``/``stream``/``level``,
``run.completed``'s ``status``). ``::add-mask::e`` must not turn ``stream``
into ``str***am``. The masker (``masking.py``) searches a draft in the form
:func:`maskable_parts` gives it -- pinned keys as ``0`` (ints are never
masked), kept enum values left out -- and :func:`from_pinned_form` puts the
masked payload back together, refusing one whose shape changed.
"""

from __future__ import annotations

from typing import Any, Final

from runevents.events import CONTRACT_TYPES, PINNED_PAYLOAD_KEYS, EventDraft, PayloadSpec


def kept_whole(pin: PayloadSpec | frozenset[str] | None, value: Any) -> bool:
    """Whether a pinned key's value is one of its enum's values (kept whole)."""
    return isinstance(pin, frozenset) and type(value) is str and value in pin


#: a pinned key in :func:`maskable_parts`' form (its place tells which key it is)
_PIN: Final = 0


def pinned_form(payload: dict[str, Any], spec: PayloadSpec) -> list[Any]:
    """``payload`` as the masker sees it: ``[key, value]`` per item, where a pinned
    key is ``0`` (ints are never masked: the key cannot change) and an enum's value
    is left out (``[0]``); a pinned object with pinned keys of its own, the same
    way. :func:`from_pinned_form` puts the payload back together."""
    items: list[Any] = []
    for key, value in payload.items():
        pin = spec.get(key, None) if key in spec else _UNPINNED
        if pin is _UNPINNED:
            items.append([key, value])
        elif kept_whole(pin, value):
            items.append([_PIN])
        elif isinstance(pin, dict) and isinstance(value, dict):
            items.append([_PIN, pinned_form(value, pin)])
        else:
            items.append([_PIN, value])
    return items


def from_pinned_form(
    items: Any, spec: PayloadSpec, original: dict[str, Any]
) -> dict[str, Any] | None:
    """The payload of a masked :func:`pinned_form`; None if its shape changed."""
    if not isinstance(items, list) or len(items) != len(original):
        return None
    out: dict[str, Any] = {}
    for item, (key, value) in zip(items, original.items(), strict=True):
        if not isinstance(item, list) or not 1 <= len(item) <= 2:
            return None
        if key not in spec:
            if len(item) != 2 or not isinstance(item[0], str):
                return None
            out[item[0]] = item[1]
            continue
        if item[0] != _PIN:
            return None
        pin = spec[key]
        if kept_whole(pin, value):
            out[key] = value
        elif len(item) != 2:
            return None
        elif isinstance(pin, dict) and isinstance(value, dict):
            inner = from_pinned_form(item[1], pin, value)
            if inner is None:
                return None
            out[key] = inner
        else:
            out[key] = item[1]
    return out


_UNPINNED: Any = object()


def maskable_parts(draft: EventDraft) -> list[Any]:
    """The parts of a draft that are masked: a contract type, the keys the contract
    pins for it and its enums' values (``stream``, ``level``, a final ``status``)
    are not."""
    spec = PINNED_PAYLOAD_KEYS.get(draft.type)
    return [
        "" if draft.type in CONTRACT_TYPES else draft.type,
        draft.source,
        draft.build_id,
        draft.payload if spec is None else pinned_form(draft.payload, spec),
    ]
