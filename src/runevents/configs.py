"""Configurations: what a run executes, and the registry the server looks them up in.

A :class:`Configuration` names a workspace and an id, the command (argv), its
``cwd``, timeout, environment, declared secrets and an optional
:class:`BuildStep` (cached by :meth:`Configuration.content_hash`).
:class:`ConfigRegistry` holds the server's configurations by ``(workspace,
id)``. They are loaded from a TOML file by :mod:`runevents.config_file`, whose
docstring is the file format's reference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runevents.exceptions import ConfigError, ConfigurationNotFound, InvalidInput
from runevents.ids import check_name
from runevents.masking import Masker

#: bumps whenever the content-hash document changes shape (old build caches miss)
HASH_SCHEME = "runevents.configuration/v1"
#: read size when hashing build inputs (bytes)
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class BuildStep:
    """A configuration's build step: commands run in order, again only when the hash changes."""

    #: argv lists, run in order in the configuration's cwd
    commands: tuple[tuple[str, ...], ...]
    #: files whose *content* joins the cache key (e.g. requirements.txt), resolved against cwd
    inputs: tuple[Path, ...] = ()
    #: for the whole build step; None = no limit
    timeout_seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class Configuration:
    """What a run of ``(workspace_id, configuration_id)`` executes."""

    workspace_id: str
    configuration_id: str
    #: argv of the run's command
    command: tuple[str, ...]
    #: working directory (absolute when loaded from a file); None = the executor's choice
    cwd: Path | None = None
    #: added to the child's environment; may hold secrets, never shown by to_dict()
    env: Mapping[str, str] = field(default_factory=dict)
    #: for the run's command; None = no limit
    timeout_seconds: float | None = None
    build: BuildStep | None = None
    description: str = ""
    #: the TOML file it came from (None when built in code)
    source: Path | None = None
    #: names of the environment variables whose values are secrets
    secrets: tuple[str, ...] = ()
    #: the secrets' values, resolved at load (name -> value); given to the child,
    #: masked in every event; never shown (not in repr, to_dict or the content hash)
    secret_values: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Ids end up in file paths and URLs: never let a bad one into a registry.
        try:
            check_name(self.workspace_id, "workspace id")
            check_name(self.configuration_id, "configuration id")
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
        if not self.command or not self.command[0]:
            raise ConfigError(f"configuration {self.key_text}: command must not be empty")

    @property
    def key_text(self) -> str:
        """``workspace/configuration`` for messages."""
        return f"{self.workspace_id}/{self.configuration_id}"

    def content_hash(self) -> str:
        """SHA-256 hex of what the build depends on.

        Covers the command, cwd, env, the build commands and timeout, and the
        *contents* of the build inputs (a missing or unreadable input hashes as
        a marker, so creating it later changes the hash).
        """
        build: dict[str, Any] | None = None
        if self.build is not None:
            build = {
                "commands": [list(argv) for argv in self.build.commands],
                "timeout_seconds": self.build.timeout_seconds,
                "inputs": [
                    [str(path), _file_digest(self._input_path(path))] for path in self.build.inputs
                ],
            }
        document = {
            "scheme": HASH_SCHEME,
            "command": list(self.command),
            "cwd": None if self.cwd is None else str(self.cwd),
            "env": sorted(self.env.items()),
            "build": build,
        }
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _input_path(self, path: Path) -> Path:
        if path.is_absolute() or self.cwd is None:
            return path
        return self.cwd / path

    def to_dict(self) -> dict[str, Any]:
        """The public JSON of ``GET /api/v1/configurations``.

        Env values may be secrets: only their names are listed (``env_keys``).
        A declared secret written into the command (``--password=VALUE``) or the
        description is masked as in the run's events (contract 11: in every
        response; ``run.started`` shows the same argv masked). Only the shown
        copy: the executor runs :attr:`command` as configured.
        """
        public: dict[str, Any] = {
            "workspace_id": self.workspace_id,
            "configuration_id": self.configuration_id,
            "description": self.description,
            "command": list(self.command),
            "has_build": self.build is not None,
            "timeout_seconds": self.timeout_seconds,
            "env_keys": sorted(self.env),
        }
        if self.secret_values:
            public, _ = Masker(self.secret_values.values()).mask_value(public)
        return public


def _file_digest(path: Path) -> str:
    """SHA-256 hex of a file's content, or a marker that can never equal one."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the path
        return f"unreadable:{type(exc).__name__}"
    return digest.hexdigest()


class ConfigRegistry:
    """The configurations a server knows, by ``(workspace_id, configuration_id)``."""

    def __init__(self, configs: Iterable[Configuration] = ()) -> None:
        self._configs: dict[tuple[str, str], Configuration] = {}
        for config in configs:
            self.add(config)

    def add(self, config: Configuration) -> None:
        """Register ``config``; a second one with the same ids is a ConfigError."""
        key = (config.workspace_id, config.configuration_id)
        existing = self._configs.get(key)
        if existing is not None:
            where = " and ".join(str(c.source or "<code>") for c in (existing, config))
            raise ConfigError(f"duplicate configuration {config.key_text}: defined in {where}")
        self._configs[key] = config

    def get(self, workspace_id: str, configuration_id: str) -> Configuration:
        """The configuration, or ConfigurationNotFound."""
        config = self._configs.get((workspace_id, configuration_id))
        if config is None:
            raise ConfigurationNotFound(
                f"no configuration {configuration_id!r} in workspace {workspace_id!r}"
            )
        return config

    def list(self, workspaces: Collection[str] | None = None) -> list[Configuration]:
        """Configurations of ``workspaces`` (None or a ``"*"`` in it: all), sorted by ids."""
        every = workspaces is None or "*" in workspaces
        return [
            config
            for key, config in sorted(self._configs.items())
            if every or (workspaces is not None and key[0] in workspaces)
        ]

    def secret_names(self) -> frozenset[str]:
        """Every variable name some configuration declares a secret: a job gets one
        only if its own configuration declares it (``executor.child_environment``)."""
        return frozenset(name for config in self._configs.values() for name in config.secrets)

    def __len__(self) -> int:
        return len(self._configs)
