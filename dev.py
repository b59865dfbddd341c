#!/usr/bin/env python3
"""Self-bootstrapping developer entry point; needs only Python 3.11+.

    python3 dev.py demo    # set up .venv, start the server with the demo configuration
                           #   (another port: python3 dev.py demo --port 8001)
    python3 dev.py test    # set up .venv, run the whole test suite
    python3 dev.py check   # ruff lint, ruff format --check, mypy --strict
    python3 dev.py bench   # the benchmark suite (add --quick for a smoke run)
    python3 dev.py cluster # several machines on this one: SeaweedFS S3, a Postgres database,
                           #   3 replicas and 2 workers, each with its own data dir
                           #   (needs Postgres on 127.0.0.1:5432; --help for options)

Any `runevents` command passes through to .venv/bin/runevents, so the
README's commands work right after the quick start without activating .venv:

    python3 dev.py runs ls                  # = .venv/bin/runevents runs ls
    python3 dev.py run demo extract -o speed=2

The virtual environment is (re)built only when pyproject.toml or the
constraints file changed, so the second call starts at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".runevents-stamp"
LOCK_INPUTS = [ROOT / "pyproject.toml", ROOT / "requirements" / "constraints.txt"]


def _digest() -> str:
    h = hashlib.sha256()
    for path in LOCK_INPUTS:
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run on an old python3
        sys.exit(f"runevents needs Python 3.11+, this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text() == _digest() and PY.exists():
        return
    if not PY.exists():
        print(f"-> creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("-> installing runevents and its dependencies (first run only, ~1 min)", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run(
        [*pip, "-c", str(ROOT / "requirements" / "constraints.txt"), "-e", f"{ROOT}[dev]"],
        check=True,
    )
    STAMP.write_text(_digest())


#: commands of the `runevents` CLI that dev.py hands over as they are
RUNEVENTS_COMMANDS = frozenset(
    {
        "serve", "worker", "run", "tail", "runs", "events", "cancel", "search",
        "token", "compact", "retention", "reindex",
    }
)  # fmt: skip


def run(*argv: str, cwd: Path | None = ROOT) -> int:
    # Not subprocess.call: on Ctrl-C it kills the child 0.25 s later, and a
    # server needs longer to hand its runs back. The child got the same SIGINT
    # (same process group): wait for it to finish on its own.
    child = subprocess.Popen(list(argv), cwd=cwd)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def runevents(*args: str) -> int:
    """``.venv/bin/runevents ARGS`` in the caller's directory (their relative paths)."""
    return run(str(BIN / "runevents"), *args, cwd=None)


def main(args: list[str]) -> int:
    cmd, rest = (args[0], args[1:]) if args else ("help", [])
    if cmd in {"help", "-h", "--help"}:
        print(__doc__)
        return 0
    ensure_venv()
    if cmd == "demo" or (cmd == "run" and not rest):
        # `run` alone is the old spelling of `demo`; with arguments it is `runevents run`
        return run(str(BIN / "runevents"), "serve", "--demo", *rest)
    if cmd in RUNEVENTS_COMMANDS:
        return runevents(cmd, *rest)
    if cmd == "test":
        return run(str(PY), "-m", "pytest", *rest)
    if cmd == "check":
        rc = run(str(BIN / "ruff"), "check", "src", "tests", "bench", "dev.py")
        rc |= run(str(BIN / "ruff"), "format", "--check", "src", "tests", "bench", "dev.py")
        rc |= run(str(BIN / "mypy"))
        return rc
    if cmd == "fmt":
        run(str(BIN / "ruff"), "check", "--fix", "src", "tests", "bench", "dev.py")
        return run(str(BIN / "ruff"), "format", "src", "tests", "bench", "dev.py")
    if cmd == "cluster":
        # the same launcher the cluster tests use (tests/fixtures/cluster.py)
        return run(str(PY), "-m", "tests.fixtures.cluster", *rest)
    if cmd == "bench":
        return run(str(PY), str(ROOT / "bench" / "run.py"), *rest)
    if cmd == "setup":
        return 0
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
