"""execute() with secrets: every draft the sink sees is masked (contract section 11)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import textwrap
from pathlib import Path

import msgspec

from runevents.capture import ConsoleTranslator
from runevents.configs import BuildStep, Configuration
from runevents.emitter import Emitter
from runevents.executor import execute
from runevents.masking import Masker
from tests.unit._sinks import ListSink

PY = sys.executable
RUN_ID = "run_01J0000000000000000000000A"
SECRET = "pa55-w0rd/with+chars="
OTHER = "second-secret-value"
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OTHER_SECRET": OTHER}

#: prints the secrets every way a job leaks them (the issue's list)
CHILD = textwrap.dedent(
    """
    import base64, json, os, sys, time, urllib.parse
    s = os.environ["DB_PASSWORD"]
    o = os.environ["OTHER_SECRET"]
    print("raw:", s, flush=True)
    print(json.dumps({"type": "run.table.summary", "payload": {"table_id": "t",
          "source_file": s + ".xlsx", "note": {"nested": [s]}}}), flush=True)
    print("stderr:", o, file=sys.stderr, flush=True)
    print("b64:", base64.b64encode(s.encode()).decode(), flush=True)
    print("basic:", base64.b64encode(("user:" + s).encode()).decode(), flush=True)
    print("url:", urllib.parse.quote(s, safe=""), flush=True)
    # one line in two writes, with a pause between: still one line, still masked
    sys.stdout.write("split: " + s[:7]); sys.stdout.flush(); time.sleep(0.3)
    sys.stdout.write(s[7:] + " end\\n"); sys.stdout.flush()
    print(json.dumps({"type": "run.error", "payload": {"stage": "run", "code": "bad",
          "message": "login failed for " + s}}), flush=True)
    late = "late-" + "value-42"  # made at run time, as a job's fetched token is
    print("::add-mask::" + late, flush=True)
    print("now", late, "and", base64.b64encode(late.encode()).decode(), flush=True)
    sys.exit(3)
    """
)


def config(**extra: object) -> Configuration:
    fields: dict[str, object] = {
        "workspace_id": "ws",
        "configuration_id": "cfg",
        "command": (PY, "-c", CHILD),
        "env": {"DB_PASSWORD": SECRET},
        "secrets": ("DB_PASSWORD", "OTHER_SECRET"),
        "secret_values": {"DB_PASSWORD": SECRET, "OTHER_SECRET": OTHER},
    }
    fields.update(extra)
    return Configuration(**fields)  # type: ignore[arg-type]


async def run(cfg: Configuration, tmp_path: Path) -> tuple[object, ListSink]:
    sink = ListSink()
    result = await execute(
        cfg,
        run_id=RUN_ID,
        options={},
        sink=sink,
        cancel=asyncio.Event(),
        work_dir=tmp_path / "work",
        max_line_bytes=4096,
        kill_grace_seconds=1.0,
        base_env=BASE_ENV,
    )
    return result, sink


def leaked(sink: ListSink, *values: str) -> list[str]:
    blob = msgspec.json.encode(sink.events).decode()
    forms = [*values, *(base64.b64encode(v.encode()).decode() for v in values)]
    return [f for f in forms if f in blob]


async def test_a_configured_run_leaks_no_secret_in_any_event(tmp_path: Path) -> None:
    build = BuildStep(
        commands=(
            (PY, "-c", "import os; print('building with', os.environ['DB_PASSWORD'])"),
            (PY, "-c", "import os, sys; print(os.environ['OTHER_SECRET'], file=sys.stderr)"),
        )
    )
    result, sink = await run(config(build=build), tmp_path)
    assert leaked(sink, SECRET, OTHER, "late-value-42") == []
    messages = sink.messages()
    assert "building with ***" in messages
    assert "***" in sink.messages(stream="stderr", scope="build")
    assert "raw: ***" in messages
    assert "stderr: ***" in sink.messages(stream="stderr", scope="run")
    assert "b64: ***" in messages
    assert "url: ***" in messages
    assert "split: *** end" in messages
    assert "::add-mask::***" in messages
    assert "now *** and ***" in messages
    assert any(m.startswith("basic: ") and "***" in m for m in messages)
    (table,) = sink.of("run.table.summary")
    assert table.payload["source_file"] == "***.xlsx"
    assert table.payload["note"] == {"nested": ["***"]}
    (error,) = sink.of("run.error")
    assert error.payload["message"] == "login failed for ***"
    # the child got the real values (it printed them; the log has ***)
    assert result.status == "failed"  # type: ignore[attr-defined]
    masked = sum(e.payload.get("masked", 0) for e in sink.events)
    assert masked >= 12


async def test_the_failure_message_is_masked_too(tmp_path: Path) -> None:
    # a failure the executor writes itself (here: a command that cannot start,
    # named with the secret) goes into run.completed and the row: masked
    cfg = config(command=(f"/nonexistent/{SECRET}/job",))
    result, sink = await run(cfg, tmp_path)
    failure = result.failure  # type: ignore[attr-defined]
    assert failure is not None and SECRET not in failure["message"]
    assert "***" in failure["message"]
    assert leaked(sink, SECRET) == []


async def test_add_mask_without_declared_secrets(tmp_path: Path) -> None:
    child = "t = 'runtime-' + 'token-9'; print('::add-mask::' + t); print('token=' + t)"
    cfg = Configuration(workspace_id="ws", configuration_id="cfg", command=(PY, "-c", child))
    _, sink = await run(cfg, tmp_path)
    assert sink.messages() == ["::add-mask::***", "token=***"]


async def test_in_a_big_read_exactly_the_lines_holding_a_secret_are_masked(
    tmp_path: Path,
) -> None:
    # one write of 5,000 lines: the executor finds the lines by the read's bytes
    child = textwrap.dedent(
        """
        import os, sys
        s = os.environ["DB_PASSWORD"]
        out = []
        for i in range(5000):
            out.append(f"{i} {s} {s}\\n" if i % 97 == 5 else f"{i} plain line\\n")
        sys.stdout.write("".join(out))
        """
    )
    _, sink = await run(config(command=(PY, "-c", child)), tmp_path)
    lines = sink.console(scope="run")
    assert len(lines) == 5000
    for i, payload in enumerate(lines):
        if i % 97 == 5:
            assert payload["message"] == f"{i} *** ***" and payload["masked"] == 2, payload
        else:
            assert payload == {
                "scope": "run",
                "stream": "stdout",
                "level": "info",
                "message": f"{i} plain line",
            }


async def test_a_forged_count_in_a_structured_first_line_is_dropped(tmp_path: Path) -> None:
    # a structured event begun in one read and ended in the next is the first
    # line of a read: it must still lose a producer's own "masked"
    child = textwrap.dedent(
        """
        import sys, time
        sys.stdout.write('{"type": "x.y", "payload": {"mas'); sys.stdout.flush()
        time.sleep(0.3)
        sys.stdout.write('ked": 99}}\\nplain\\n'); sys.stdout.flush()
        """
    )
    _, sink = await run(config(command=(PY, "-c", child)), tmp_path)
    (event,) = sink.of("x.y")
    assert event.payload == {}


async def test_overlapping_forms_leave_no_line_of_a_multi_line_secret_visible() -> None:
    # Defect (overlapping matches, the executor's byte check): a multi-line value's
    # one match hid the forms of its middle lines, so only the lines where the
    # match began and ended were masked and the middle one was stored in clear
    key = "first-line-AAAA\nmiddle-line-BBBB\nlast-line-CCCC"
    sink = ListSink()
    emitter = Emitter(sink, ConsoleTranslator(scope="run"), Masker([key, OTHER]))
    raw = b"ok\n" + key.encode() + b"\nabcd " + OTHER.encode() + b"\n"
    await emitter.lines("stdout", raw.split(b"\n")[:-1], braces=False, raw=raw)
    assert [e.payload["message"] for e in sink.events] == ["ok", "***", "***", "***", "abcd ***"]
