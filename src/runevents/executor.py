"""Execute one run of a configuration: build step, command, output -> events.

:func:`execute` is what a worker calls for a claimed run. It emits, in order
(the manager already wrote ``run.queued`` and writes ``run.completed`` from the
returned :class:`ExecutionResult` -- never the executor):

1. with a build step: ``set_status(BUILDING)`` and the ``build.*`` events of
   :mod:`runevents.build` (a cached build is ``build.created`` + ``build.completed``);
2. ``set_status(RUNNING)``, ``run.started`` (``status: "running"``);
3. the command's output: ``console.line`` per line, or the producer's own
   structured events (:mod:`runevents.capture`).

The child process (:mod:`runevents.process`; on Linux under its supervisor, which has
the session and stops every descendant) gets:

* cwd: ``config.cwd``, else a per-run scratch directory;
* env: this process's environment without the server's own variables
  (:data:`SERVER_ENV_PREFIXES`: ``RUNEVENTS_*`` settings such as the database
  URL, the object store's ``AWS_*`` credentials, libpq's ``PG*``) and without
  any variable another configuration declares a secret (``withheld_env``),
  ``PYTHONUNBUFFERED=1`` unless set (so Python jobs stream live), the
  configuration's ``env``, then
  ``RUNEVENTS_RUN_ID``, ``RUNEVENTS_WORKSPACE_ID``, ``RUNEVENTS_CONFIGURATION_ID``,
  ``RUNEVENTS_OPTIONS_FILE`` (the run options as a JSON object, as stored: a
  declared secret in them is ``***``; the child has its value in the environment),
  ``RUNEVENTS_RUN_DIR`` (the scratch directory, removed after the run) and, with
  a build step, ``RUNEVENTS_BUILD_DIR``;
* the configuration's secrets (``secrets``): their values, also when they
  come from this process's environment under a withheld name (a job that needs
  the worker's ``AWS_SECRET_ACCESS_KEY`` declares it, and it is masked);
* argv placeholders: ``{python}`` is replaced by the interpreter running
  runevents (so a configuration can run Python without depending on ``PATH``)
  and ``{config_dir}`` by the directory of the configuration's TOML file.

How a run ends (``ExecutionResult``):

===========================  =========  ====================================================
what happened                status     failure
===========================  =========  ====================================================
exit code 0                  succeeded  null
exit code N != 0             failed     ``{stage: run, code: exit_code}``; null when the
                                        producer printed a well-formed ``run.error`` (the
                                        summary then reports that one)
killed by signal N           failed     as above, exit code ``128 + N``
command not found            failed     ``{stage: run, code: command_not_found}``; exit null
run timeout                  failed     ``{stage: run, code: timeout}``
cancel (``cancel`` is set)   cancelled  null (exit code of the stopped child, if any)
build failed / timed out     failed     ``{stage: build, code: exit_code|timeout|...}``; the
                                        command is not started, exit null
===========================  =========  ====================================================

Secrets (contract section 11): every draft goes through the run's
:class:`~runevents.masking.Masker` on its way to the sink -- the executor's and
the build's :class:`~runevents.emitter.Emitter` hold it, and every draft of an
execution goes through one of them -- and the returned failure is masked too.
The masker starts with the configuration's secret values and learns
``::add-mask::`` values from the run's console lines (build and command share it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from runevents.build import BuildCache
from runevents.capture import ConsoleTranslator
from runevents.configs import Configuration
from runevents.emitter import Emitter
from runevents.events import FAILURE_KEYS, EventDraft
from runevents.masking import Masker
from runevents.models import RunStatus, rfc3339, utcnow
from runevents.process import ProcessOutcome, run_process

FinalStatus = Literal["succeeded", "failed", "cancelled"]

#: argv placeholder for the interpreter running runevents
PYTHON_PLACEHOLDER = "{python}"
#: argv placeholder for the directory of the configuration's TOML file
CONFIG_DIR_PLACEHOLDER = "{config_dir}"
#: name of the options file in the run's scratch directory
OPTIONS_FILE = "options.json"
#: variables of this process that are the server's own, never a job's: its settings
#: (``RUNEVENTS_*``: database URL, session secret, tokens file), the object store's
#: credentials (``AWS_*``, read by obstore) and the database client's (``PG*``, libpq's
#: variables: ``PGPASSWORD``, ``PGPASSFILE``...). A configuration passes one on by
#: naming it in its ``env`` or ``secrets``.
SERVER_ENV_PREFIXES = ("RUNEVENTS_", "AWS_", "PG")


class EventSink(Protocol):
    """Where the executor's events and status moves go (the manager's ``RunSession``)."""

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Append ``drafts`` to the run's log, in order."""

    async def set_status(self, status: RunStatus, *, at: datetime | None = None) -> None:
        """Move the run to ``BUILDING`` or ``RUNNING`` (``at``: the instant it started
        running, which its ``run.started`` event carries too)."""


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """How an execution ended: what the manager puts into ``run.completed``."""

    status: FinalStatus
    #: the command's exit code (``128 + N`` if killed by signal N); None if it never ran
    exit_code: int | None
    #: ``{"stage": "build"|"run", "code": str, "message": str}`` or None
    failure: dict[str, Any] | None
    #: when ``run.started`` was emitted (RFC 3339 UTC); None if the command never started
    started_at: str | None
    completed_at: str

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from ``started_at`` to ``completed_at`` (None without a start)."""
        if self.started_at is None:
            return None
        start = datetime.fromisoformat(self.started_at)
        end = datetime.fromisoformat(self.completed_at)
        return max(int((end - start).total_seconds() * 1000), 0)

    def execution(self) -> dict[str, Any]:
        """``run.completed``'s ``execution`` object (contract section 2)."""
        return {
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "duration_ms": self.duration_ms,
        }


async def execute(
    config: Configuration,
    *,
    run_id: str,
    options: Mapping[str, Any],
    sink: EventSink,
    cancel: asyncio.Event,
    work_dir: Path,
    max_line_bytes: int,
    kill_grace_seconds: float,
    base_env: Mapping[str, str] | None = None,
    withheld_env: Collection[str] = (),
) -> ExecutionResult:
    """Run ``config`` once for run ``run_id``; see the module docstring for events and results.

    ``work_dir`` holds build caches (``builds/``) and per-run scratch
    directories (``tmp/{run_id}``). ``base_env`` is the environment children
    inherit (default: this process's); ``withheld_env`` names left out of it
    unless ``config`` declares them (every configuration's secrets:
    ``ConfigRegistry.secret_names``). Raises only what ``sink`` raises (or
    ``CancelledError``); the child's process group is gone before it returns or
    raises.
    """
    masker = Masker(config.secret_values.values())
    result = await _execute(
        config,
        masker,
        run_id=run_id,
        options=options,
        sink=sink,
        cancel=cancel,
        work_dir=work_dir,
        max_line_bytes=max_line_bytes,
        kill_grace_seconds=kill_grace_seconds,
        base_env=base_env,
        withheld_env=withheld_env,
    )
    if result.failure is not None and masker:
        failure, _ = masker.mask_pinned(result.failure, FAILURE_KEYS)
        result = dataclasses.replace(result, failure=failure)
    return result


async def _execute(
    config: Configuration,
    masker: Masker,
    *,
    run_id: str,
    options: Mapping[str, Any],
    sink: EventSink,
    cancel: asyncio.Event,
    work_dir: Path,
    max_line_bytes: int,
    kill_grace_seconds: float,
    base_env: Mapping[str, str] | None,
    withheld_env: Collection[str],
) -> ExecutionResult:
    if cancel.is_set():
        return _ended("cancelled", None, None, None)
    run_dir = work_dir / "tmp" / run_id
    options_file = run_dir / OPTIONS_FILE
    # msgspec, as the run.queued event that holds the same options: orjson refuses
    # integers beyond 64 bits, which JSON and the API allow (issue 20)
    await asyncio.to_thread(_prepare_run_dir, run_dir, msgspec.json.encode(dict(options)))
    try:
        env = child_environment(
            os.environ if base_env is None else base_env,
            config,
            {
                "RUNEVENTS_RUN_ID": run_id,
                "RUNEVENTS_WORKSPACE_ID": config.workspace_id,
                "RUNEVENTS_CONFIGURATION_ID": config.configuration_id,
                "RUNEVENTS_OPTIONS_FILE": str(options_file),
                "RUNEVENTS_RUN_DIR": str(run_dir),
            },
            withheld_env,
        )
        async with AsyncExitStack() as stack:
            if config.build is not None:
                await sink.set_status(RunStatus.BUILDING)
                build = await stack.enter_async_context(
                    BuildCache(work_dir).prepare(
                        config,
                        argvs=[expand_argv(argv, config) for argv in config.build.commands],
                        sink=sink,
                        cancel=cancel,
                        env=env,
                        cwd=config.cwd,
                        kill_grace_seconds=kill_grace_seconds,
                        max_line_bytes=max_line_bytes,
                        masker=masker,
                    )
                )
                if build.status != "succeeded":
                    return _ended(build.status, None, build.failure, None)
                # the build stays held (shared) until the command ends: no cleanup removes it
                env["RUNEVENTS_BUILD_DIR"] = str(build.build_dir)
            if cancel.is_set():
                return _ended("cancelled", None, None, None)
            return await _run_command(
                config, sink, masker, cancel, env, run_dir, max_line_bytes, kill_grace_seconds
            )
    finally:
        await asyncio.to_thread(shutil.rmtree, run_dir, True)


async def _run_command(
    config: Configuration,
    sink: EventSink,
    masker: Masker,
    cancel: asyncio.Event,
    env: dict[str, str],
    run_dir: Path,
    max_line_bytes: int,
    kill_grace_seconds: float,
) -> ExecutionResult:
    argv = expand_argv(config.command, config)
    # one instant for the row's started_at, run.started and the execution record, so a
    # row rebuilt from the log (reindex) is the same row (contract 2)
    started = utcnow()
    started_at = rfc3339(started)
    await sink.set_status(RunStatus.RUNNING, at=started)
    translator = ConsoleTranslator(scope="run")
    emitter = Emitter(sink, translator, masker)
    await emitter.emit(
        [
            EventDraft(
                type="run.started",
                created_at=started_at,
                payload={"status": "running", "command": argv},
            )
        ]
    )
    outcome = await run_process(
        argv,
        cwd=config.cwd or run_dir,
        env=env,
        emitter=emitter,
        cancel=cancel,
        timeout_seconds=config.timeout_seconds,
        kill_grace_seconds=kill_grace_seconds,
        max_line_bytes=max_line_bytes,
    )
    if outcome.ending == "spawn_failed":
        await emitter.notice(outcome.error_message or "cannot start the command", level="error")
    status, failure = judge_run(outcome, config.timeout_seconds, translator.run_error)
    return _ended(status, outcome.exit_code, failure, started_at)


def judge_run(
    outcome: ProcessOutcome,
    timeout_seconds: float | None,
    run_error: dict[str, Any] | None,
) -> tuple[FinalStatus, dict[str, Any] | None]:
    """(status, failure) of the run command's outcome (table in the module docstring)."""
    if outcome.ending == "cancelled":
        return "cancelled", None
    if outcome.ending == "timeout":
        message = f"command timed out after {timeout_seconds:g}s and was stopped"
        return "failed", {"stage": "run", "code": "timeout", "message": message}
    if outcome.ending == "spawn_failed":
        code = outcome.error_code or "spawn_failed"
        return "failed", {
            "stage": "run",
            "code": code,
            "message": outcome.error_message or "cannot start the command",
        }
    if outcome.exit_code == 0:
        return "succeeded", None
    if run_error is not None:
        return "failed", None  # the summary reports the producer's own run.error
    if outcome.signal is not None:
        message = f"command was killed by {outcome.signal} (exit code {outcome.exit_code})"
    else:
        message = f"command exited with code {outcome.exit_code}"
    return "failed", {"stage": "run", "code": "exit_code", "message": message}


def expand_argv(argv: Sequence[str], config: Configuration) -> list[str]:
    """``argv`` with the ``{python}`` and ``{config_dir}`` placeholders replaced."""
    config_dir = str(config.source.parent) if config.source is not None else str(config.cwd or "")
    out = []
    for arg in argv:
        if "{" in arg:
            arg = arg.replace(PYTHON_PLACEHOLDER, sys.executable)
            arg = arg.replace(CONFIG_DIR_PLACEHOLDER, config_dir)
        out.append(arg)
    return out


def child_environment(
    base: Mapping[str, str],
    config: Configuration,
    runevents_vars: Mapping[str, str],
    withheld: Collection[str] = (),
) -> dict[str, str]:
    """The child's environment (rules in the module docstring)."""
    withheld = set(withheld)
    env = {
        key: value
        for key, value in base.items()
        if not key.startswith(SERVER_ENV_PREFIXES) and key not in withheld
    }
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(config.env)
    # declared secrets reach the child whatever their name (they were resolved at load)
    env.update(config.secret_values)
    env.update(runevents_vars)
    return env


def _prepare_run_dir(run_dir: Path, options: bytes) -> None:
    # a leftover from a crashed worker that ran this run before: start clean
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / OPTIONS_FILE).write_bytes(options)


def _ended(
    status: FinalStatus,
    exit_code: int | None,
    failure: dict[str, Any] | None,
    started_at: str | None,
) -> ExecutionResult:
    completed_at = rfc3339(utcnow())
    assert completed_at is not None
    return ExecutionResult(
        status=status,
        exit_code=exit_code,
        failure=failure,
        started_at=started_at,
        completed_at=completed_at,
    )
