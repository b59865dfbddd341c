"""The configurations file: ``[[configuration]]`` entries in TOML, loaded into Configurations.

``runevents serve --config runevents.toml`` loads a file of ``[[configuration]]``
entries::

    [[configuration]]
    workspace = "acme"                       # required, a workspace id
    id = "etl"                               # required, a configuration id
    description = "Nightly ETL"              # optional
    command = ["python", "etl.py", "--fast"] # required: argv list, or one string split like a shell
    cwd = "jobs/etl"                         # optional, default: the TOML file's directory
    timeout = "30m"                          # optional: duration (0s, 90m, 36h, 7d) or seconds
    env = { LOG_LEVEL = "debug" }            # optional: string -> string, added to the environment
    secrets = ["DB_PASSWORD"]                # optional: variables whose values no log may hold

    [configuration.build]                    # optional build step, cached by content hash
    commands = [["python", "-m", "venv", ".venv"],
                [".venv/bin/pip", "install", "-r", "requirements.txt"]]
    inputs = ["requirements.txt"]            # files whose content joins the cache key
    timeout = "10m"

Paths:

- ``cwd`` is resolved against the directory of the TOML file, and defaults to it,
  so a file can sit next to its scripts. It must exist when the file is loaded.
- A relative program path (``command[0]`` or a build command's first item that
  contains a ``/``, e.g. ``./run.sh`` or ``.venv/bin/python``) is made absolute
  against the configuration's ``cwd``: the directory the program runs in, where
  a shell or ``subprocess`` would look for it, and where the build step creates
  what it builds. A bare name (``python``) is left for the ``PATH`` lookup.
  Programs are not required to exist at load time: a build step may create
  them, and a missing one fails the run with that reason.
- Build ``inputs`` are resolved against ``cwd`` too.

Secrets (contract section 11): each name in ``secrets`` is an environment
variable, taken from the entry's ``env``, else from this process's environment
(the server's or the worker's). Its value is handed to the build step and the
command and masked in every event of the run (:mod:`runevents.masking`). A name
that is not set, or a value shorter than 8 characters (it would mask ordinary
words), is an error at load, naming the file, the configuration and the reason.

Every error -- a missing file, TOML that does not parse, a bad or unknown key, a
duplicate ``(workspace, id)`` -- raises :class:`~runevents.exceptions.ConfigError`
whose message is ``FILE: KEY PATH: REASON``, e.g. ``runevents.toml:
configuration[2].timeout: invalid duration 'ten minutes': use forms like 0s, 90m,
36h, 7d``. Entries are numbered from 0, as TOML arrays are. Unknown keys are
errors, so a typo never passes silently.
"""

from __future__ import annotations

import math
import os
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runevents.configs import BuildStep, Configuration
from runevents.exceptions import ConfigError, InvalidInput
from runevents.ids import check_name
from runevents.masking_forms import MIN_SECRET_CHARS
from runevents.settings import parse_duration

_ENTRY_KEYS = (
    "workspace",
    "id",
    "description",
    "command",
    "cwd",
    "timeout",
    "env",
    "secrets",
    "build",
)
_BUILD_KEYS = ("commands", "inputs", "timeout")


class _EntryError(Exception):
    """A bad value at ``key`` (a key path like ``configuration[2].timeout``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def load_config_file(path: Path, environ: Mapping[str, str] | None = None) -> list[Configuration]:
    """Parse and validate a configurations TOML file (see the module docstring).

    ``environ`` is where secrets not in an entry's ``env`` come from (default:
    this process's environment, which the children inherit anyway). Raises
    ConfigError naming the file, the key path and the reason.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})", file=str(path)) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", file=str(path)) from None
    try:
        return _parse_document(document, path, os.environ if environ is None else environ)
    except _EntryError as exc:
        raise ConfigError(
            f"{path}: {exc.key}: {exc.reason}", file=str(path), key=exc.key, reason=exc.reason
        ) from None


def _parse_document(
    document: dict[str, Any], path: Path, environ: Mapping[str, str]
) -> list[Configuration]:
    _reject_unknown(document, ("configuration",), "")
    entries = document.get("configuration", [])
    if not isinstance(entries, list):
        raise _EntryError("configuration", "must be an array of tables: [[configuration]]")
    base = Path(os.path.normpath(path.absolute().parent))
    configs: list[Configuration] = []
    seen: dict[tuple[str, str], str] = {}
    for index, entry in enumerate(entries):
        where = f"configuration[{index}]"
        config = _parse_entry(entry, where, base, path, environ)
        key = (config.workspace_id, config.configuration_id)
        if key in seen:
            raise _EntryError(
                where, f"duplicate configuration {config.key_text} (first at {seen[key]})"
            )
        seen[key] = where
        configs.append(config)
    return configs


def _parse_entry(
    entry: object, where: str, base: Path, source: Path, environ: Mapping[str, str]
) -> Configuration:
    table = _table(entry, where)
    _reject_unknown(table, _ENTRY_KEYS, where)
    workspace = _name(table, "workspace", where, "workspace id")
    configuration_id = _name(table, "id", where, "configuration id")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise _EntryError(f"{where}.description", "must be a string")
    cwd = _cwd(table.get("cwd"), f"{where}.cwd", base)
    if "command" not in table:
        raise _EntryError(f"{where}.command", "missing (the argv to run)")
    build = table.get("build")
    env = _env(table.get("env", {}), f"{where}.env")
    names, values = _secrets(
        table.get("secrets", []),
        f"{where}.secrets",
        f"{workspace}/{configuration_id}",
        env,
        environ,
    )
    return Configuration(
        workspace_id=workspace,
        configuration_id=configuration_id,
        command=_argv(table["command"], f"{where}.command", cwd),
        cwd=cwd,
        env=env,
        secrets=names,
        secret_values=values,
        timeout_seconds=_timeout(table.get("timeout"), f"{where}.timeout"),
        build=None if build is None else _build(build, f"{where}.build", cwd),
        description=description,
        source=source,
    )


def _build(value: object, where: str, cwd: Path) -> BuildStep:
    table = _table(value, where)
    _reject_unknown(table, _BUILD_KEYS, where)
    commands = table.get("commands")
    if not isinstance(commands, list) or not commands:
        raise _EntryError(
            f"{where}.commands", "must be a non-empty list of commands (each an argv list)"
        )
    inputs = table.get("inputs", [])
    if not isinstance(inputs, list):
        raise _EntryError(f"{where}.inputs", "must be a list of file paths")
    paths: list[Path] = []
    for index, item in enumerate(inputs):
        if not isinstance(item, str) or not item:
            raise _EntryError(f"{where}.inputs[{index}]", "must be a non-empty file path string")
        _no_nul(item, f"{where}.inputs[{index}]")
        paths.append(_under(cwd, item))
    return BuildStep(
        commands=tuple(
            _argv(argv, f"{where}.commands[{index}]", cwd) for index, argv in enumerate(commands)
        ),
        inputs=tuple(paths),
        timeout_seconds=_timeout(table.get("timeout"), f"{where}.timeout"),
    )


# -- value checks -----------------------------------------------------------------------


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _EntryError(where, "must be a table")
    return value


def _reject_unknown(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise _EntryError(path, f"unknown key (expected one of: {', '.join(allowed)})")


def _name(table: dict[str, Any], key: str, where: str, what: str) -> str:
    if key not in table:
        raise _EntryError(f"{where}.{key}", f"missing (the {what})")
    try:
        return check_name(table[key], what)
    except InvalidInput as exc:
        raise _EntryError(f"{where}.{key}", exc.message) from None


def _no_nul(text: str, where: str) -> None:
    # A NUL cannot reach a process: argv, env and paths are C strings.
    if "\0" in text:
        raise _EntryError(where, "must not contain a NUL character")


def _under(directory: Path, relative: str) -> Path:
    """``relative`` made absolute against ``directory``, without following symlinks.

    Symlinks are kept on purpose: ``.venv/bin/python`` must stay the venv's link,
    not become the interpreter it points to.
    """
    return Path(os.path.normpath(directory / relative))


def _cwd(value: object, where: str, base: Path) -> Path:
    if value is None:
        return base
    if not isinstance(value, str) or not value:
        raise _EntryError(where, "must be a non-empty directory path string")
    _no_nul(value, where)
    cwd = _under(base, value)
    if not cwd.is_dir():
        raise _EntryError(where, f"not an existing directory: {cwd}")
    return cwd


def _argv(value: object, where: str, cwd: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise _EntryError(where, f"cannot split the command string: {exc}") from None
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise _EntryError(f"{where}[{index}]", "must be a string")
        parts = list(value)
    else:
        raise _EntryError(where, "must be a list of strings (argv) or a command string")
    if not parts or not parts[0]:
        raise _EntryError(where, "must not be empty")
    for index, part in enumerate(parts):
        _no_nul(part, f"{where}[{index}]")
    program = parts[0]
    if "/" in program and not os.path.isabs(program):
        program = str(_under(cwd, program))
    return (program, *parts[1:])


def _env(value: object, where: str) -> dict[str, str]:
    table = _table(value, where)
    env: dict[str, str] = {}
    for key, item in table.items():
        if not key or "=" in key:
            raise _EntryError(f"{where}.{key}", "invalid variable name (empty or contains '=')")
        if not isinstance(item, str):
            raise _EntryError(f"{where}.{key}", "must be a string (quote numbers and booleans)")
        _no_nul(key, f"{where}.{key}")
        _no_nul(item, f"{where}.{key}")
        env[key] = item
    return env


def _secrets(
    value: object, where: str, config: str, env: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The declared secret names and their values (entry's env first, then ``environ``)."""
    if not isinstance(value, list):
        raise _EntryError(where, "must be a list of environment variable names")
    values: dict[str, str] = {}
    for index, name in enumerate(value):
        key = f"{where}[{index}]"
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise _EntryError(key, f"configuration {config}: {name!r} is not a variable name")
        secret = env.get(name, environ.get(name))
        if secret is None:
            raise _EntryError(
                key,
                f"configuration {config}: secret {name} is not set "
                "(neither in the configuration's env nor in the environment)",
            )
        if len(secret) < MIN_SECRET_CHARS:
            raise _EntryError(
                key,
                f"configuration {config}: secret {name} is {len(secret)} characters long; "
                f"at least {MIN_SECRET_CHARS} are required (masking a shorter value would "
                "hide ordinary words in every log)",
            )
        values[name] = secret
    return tuple(values), values


def _timeout(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            seconds = parse_duration(value).total_seconds()
        except InvalidInput as exc:
            raise _EntryError(where, exc.message) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _EntryError(where, "must be a duration like '30m' or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _EntryError(where, f"must be a positive duration, got {value!r}")
    return seconds
