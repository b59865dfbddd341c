"""The benchmark suite: every ``bench/bench_*.py`` module, one table, in one run.

    python bench/run.py            # full sizes (what the README shows)
    python bench/run.py --quick    # small sizes: only checks that every benchmark runs
    python bench/run.py --only peers engine

Each module runs ``collect(quick)`` in its own child process, one after the
other: a module that crashes, hangs or leaks memory cannot take the suite
down or skew the memory figures of the next one, and on a timeout its whole
process group (servers it started included) is stopped. A module that fails
becomes one "failed: ..." row and the suite goes on; a module that does not
exist yet is simply absent.

Prints one Markdown table and writes ``bench/results/latest.md`` (with the
machine and the command), ``latest.json`` (same numbers) and ``rates.png``
(append and replay rates, log scale). Exits 1 when a benchmark failed, so CI
notices; skipped rows (a peer not reachable) are not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import (  # noqa: E402 - bench/ is put on sys.path just above
    RESULTS_DIR,
    Row,
    failed_row,
    machine_description,
    render_markdown,
    render_table,
    rows_to_json,
)

# Modules in this order (the table groups sections by first appearance, so the
# project's rows come before the peers' in each section); any other
# bench_*.py runs after them, alphabetically.
PREFERRED_ORDER = (
    "bench_engine",
    "bench_api",
    "bench_peers",
    "bench_runs_list",
    "bench_storage",
    "bench_compaction",
)
TIMEOUT_QUICK_S = 300.0
TIMEOUT_FULL_S = 3600.0


def discover() -> list[str]:
    names = {p.stem for p in BENCH_DIR.glob("bench_*.py")}
    ordered = [n for n in PREFERRED_ORDER if n in names]
    return ordered + sorted(names - set(ordered))


def select(modules: list[str], only: list[str] | None) -> list[str]:
    if not only:
        return modules
    wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in only}
    unknown = wanted - set(modules)
    if unknown:
        print(f"no such benchmark module: {', '.join(sorted(unknown))}", file=sys.stderr)
    return [m for m in modules if m in wanted]


# ---------------------------------------------------------------------------
# child side


def child(module_name: str, quick: bool, out: Path) -> int:
    """Import one module, run its collect(quick), write the rows as JSON to ``out``."""
    import importlib

    # Both import styles work in a module: ``from common import`` (bench/ is on
    # sys.path, as when a module runs as a script) and ``from bench.common import``.
    sys.path.insert(1, str(BENCH_DIR.parent))
    # A module's own prints go to stderr: the parent's stdout is the table.
    sys.stdout = sys.stderr
    try:
        module = importlib.import_module(module_name)
        rows = module.collect(quick)
        # default=float: numpy scalars and the like become plain numbers
        data = json.dumps({"rows": rows_to_json(list(rows))}, default=float)
    except BaseException as exc:  # everything, even SystemExit, becomes a row
        import traceback

        traceback.print_exc()
        data = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    out.write_text(data)
    return 0


# ---------------------------------------------------------------------------
# parent side


def _pump(stream: Any, tail: deque[str]) -> None:
    # Forward the child's output live (progress) and keep the end for errors.
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip())


def run_module(module: str, quick: bool, timeout: float) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="runevents-bench-run-") as tmp:
        out = Path(tmp) / "rows.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", module, "--out", str(out)]
        if quick:
            argv.append("--quick")
        tail: deque[str] = deque(maxlen=20)
        # Own session = own process group: on a timeout we can stop the child
        # and whatever it started, and nothing else.
        proc = subprocess.Popen(
            argv,
            cwd=BENCH_DIR.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pump = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            pump.join(timeout=5)
            return [failed_row(module, module, f"timed out after {timeout:.0f} s")]
        # The group outlives the child only if the module left processes running
        # (a server it did not stop): stop them so the next module runs alone.
        if _group_alive(proc.pid):
            print(f"{module} left processes running; stopping them", file=sys.stderr)
            _stop_group(proc)
        pump.join(timeout=5)
        if not out.exists():
            last = next((line for line in reversed(tail) if line.strip()), "")
            return [failed_row(module, module, f"exit code {rc}: {last}")]
        payload = json.loads(out.read_bytes())
    if "error" in payload:
        return [failed_row(module, module, payload["error"])]
    rows: list[Row] = []
    for r in payload["rows"]:
        r["value"] = math.nan if r.get("value") is None else float(r["value"])
        r.setdefault("vs", None)
        r.setdefault("ratio", None)
        r.setdefault("note", "")
        rows.append(r)
    return rows


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours any more
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child's process group (the child and whatever it started), then reap."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(proc.pid):
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
            else:
                time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


# ---------------------------------------------------------------------------
# outputs

_REPLAY_WORDS = re.compile(r"replay|read|select|xrange|sse|download|page|follow|tail|scan", re.I)
_APPEND_WORDS = re.compile(r"append|ingest|insert|copy|xadd|write|limit", re.I)
_PEER_WORDS = re.compile(r"^(postgres|sqlite|redis)", re.I)


def classify(r: Row) -> str | None:
    """'append', 'replay' or None: which panel of the plot a row belongs to."""
    if r.get("unit") != "events/s" or not _finite(r.get("value")):
        return None
    text = f"{r['section']} {r['name']}"
    if re.search("replay", r["section"], re.I) or _REPLAY_WORDS.search(r["name"]):
        return "replay"
    if _APPEND_WORDS.search(text):
        return "append"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _colour(r: Row) -> str:
    name = r["name"].lower()
    if name.startswith(("limit", "read limit")) or ("limit" in name and r.get("ratio") == 1.0):
        return "#888888"  # the physical limits (baselines: ratio 1.0 against themselves)
    if _PEER_WORDS.search(r["name"]):
        return "#d9822b"  # the peers
    return "#2b6cb0"  # the project


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    def first_of_each_name(kind: str) -> list[Row]:
        # a baseline or peer measured by two modules (or one row with two ratios)
        # would draw two bars on one label: keep the first measurement only
        seen: set[str] = set()
        kept = []
        for r in rows:
            if classify(r) == kind and r["name"] not in seen:
                seen.add(r["name"])
                kept.append(r)
        return kept

    panels = {"append": first_of_each_name("append"), "replay": first_of_each_name("replay")}
    heights = [max(1, len(v)) for v in panels.values()]
    fig, axes = plt.subplots(
        2,
        1,
        figsize=(11, 1.6 + 0.38 * sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (kind, panel_rows) in zip(axes[:, 0], panels.items(), strict=True):
        ax.set_title(f"{kind} rate (events/s, log scale)", loc="left", fontsize=10)
        if not panel_rows:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        panel_rows = sorted(panel_rows, key=lambda r: r["value"])
        labels = [_short(r["name"]) for r in panel_rows]
        values = [r["value"] for r in panel_rows]
        bars = ax.barh(labels, values, color=[_colour(r) for r in panel_rows])
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, max(values) * 8)
        for bar, r in zip(bars, panel_rows, strict=True):
            ratio = r.get("ratio")
            text = f" {r['value']:,.0f}"
            if ratio is not None and r.get("vs"):
                text += f"  ({ratio:.2f}x {r['vs']})"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=8)  # fmt: skip
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", which="both", alpha=0.25)
    fig.legend(
        handles=[
            Patch(color="#2b6cb0", label="runevents"),
            Patch(color="#d9822b", label="peers (rows / stream)"),
            Patch(color="#888888", label="physical limit"),
        ],
        loc="upper right",
        ncol=3,
        fontsize=8,
    )
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    # Leave the top strip to the title and the legend (fig-level artists).
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _short(name: str, width: int = 58) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _write(path: Path, data: str) -> None:
    # Whole file or nothing: a README pointing at latest.md never shows half a table.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="modules, e.g. peers engine")
    parser.add_argument("--timeout", type=float, help="seconds per module before it is stopped")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.quick, args.out)

    command = " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    timeout = args.timeout or (TIMEOUT_QUICK_S if args.quick else TIMEOUT_FULL_S)
    modules = select(discover(), args.only)
    started = time.perf_counter()
    machine = machine_description()  # before the load we add ourselves
    machine["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine["mode"] = (
        "quick (small sizes, checks that the benchmarks run)" if args.quick else "full"
    )
    machine["command"] = command

    rows: list[Row] = []
    for module in modules:
        print(f"== {module}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module_rows = run_module(module, args.quick, timeout)
        print(f"== {module}: {len(module_rows)} rows in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        rows += module_rows
    machine["duration_s"] = time.perf_counter() - started

    print(render_table(rows))
    args.results.mkdir(parents=True, exist_ok=True)
    _write(args.results / "latest.md", render_markdown(rows, machine))
    _write(
        args.results / "latest.json",
        json.dumps(
            {"machine": machine, "modules": modules, "rows": rows_to_json(rows)},
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
    )
    try:
        plot(rows, args.results / "rates.png", f"runevents, {machine['date']}, {machine['mode']}")
    except Exception as exc:  # the numbers matter more than the picture
        print(f"plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"wrote {args.results}/latest.md, latest.json, rates.png", file=sys.stderr)
    failed = [r for r in rows if str(r.get("note", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
