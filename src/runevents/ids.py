"""Identifiers: validation of caller-supplied ids and generation of server ids.

Every id that ends up in a path (file or URL) is checked here before any file
or row is touched (contract section 1): ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$``,
never ``.`` or ``..``. Run ids are ``run_`` + ULID and are validated as strictly
because they also name directories.
"""

from __future__ import annotations

import re

from ulid import ULID

from runevents.exceptions import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RUN_ID_RE = re.compile(r"run_[0-9A-HJKMNP-TV-Z]{26}")


def check_name(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid workspace/configuration id, else raise InvalidInput."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in {".", ".."}:
        raise InvalidInput(f"invalid {what}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}$")
    return value


def check_run_id(value: object) -> str:
    """Return ``value`` if it is a well-formed run id (``run_`` + ULID), else raise InvalidInput.

    The contract rejects anything else with 422 before any file or row is touched.
    """
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
        raise InvalidInput("invalid run_id: must be 'run_' followed by a ULID")
    return value


def new_run_id() -> str:
    """A new, time-sortable run id."""
    return f"run_{ULID()}"


def new_ulid() -> str:
    """A new ULID string (time-sortable, 26 chars)."""
    return str(ULID())
