"""Build step of the demo configuration: prepare the job's environment, offline.

``prepare_env.py resolve REQUIREMENTS`` checks every module named in the
requirements file and writes ``requirements.lock`` (JSON) into
``$RUNEVENTS_BUILD_DIR``; ``prepare_env.py compile SCRIPT`` byte-compiles the
job into the build directory and writes ``environment.json``. Standard library
only: it stands in for ``pip install`` on a machine without network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import py_compile
import sys
import time
from pathlib import Path

GREEN, YELLOW, CYAN, DIM, RESET = "\x1b[32m", "\x1b[33m", "\x1b[36m", "\x1b[2m", "\x1b[0m"
#: pause per resolved module, so the build is visible live (seconds)
STEP_SECONDS = 0.04


def build_dir() -> Path:
    """The build directory the executor gives us."""
    value = os.environ.get("RUNEVENTS_BUILD_DIR")
    if not value:
        print("RUNEVENTS_BUILD_DIR is not set: run this through runevents", file=sys.stderr)
        raise SystemExit(2)
    return Path(value)


def resolve(requirements: Path) -> int:
    """Check each required module and write ``requirements.lock``."""
    names = [
        line.split("#", 1)[0].strip()
        for line in requirements.read_text(encoding="utf-8").splitlines()
    ]
    names = [name for name in names if name]
    print(f"{CYAN}Resolving{RESET} {len(names)} requirements from {requirements.name}")
    print(
        f"{YELLOW}note:{RESET} offline build: requirements come from the standard library",
        file=sys.stderr,
    )
    locked = {}
    for name in names:
        time.sleep(STEP_SECONDS)
        spec = importlib.util.find_spec(name)
        if spec is None:
            print(f"ERROR: no module named {name!r}", file=sys.stderr)
            return 1
        origin = spec.origin or "built-in"
        locked[name] = origin
        print(f"  {GREEN}✓{RESET} {name} {DIM}({origin}){RESET}")
    lock = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "requirements_sha256": hashlib.sha256(requirements.read_bytes()).hexdigest(),
        "modules": locked,
    }
    target = build_dir() / "requirements.lock"
    target.write_text(json.dumps(lock, indent=2, sort_keys=True), encoding="utf-8")
    print(f"Locked {len(locked)} modules -> {target.name}")
    return 0


def compile_job(script: Path) -> int:
    """Byte-compile the job into the build directory (a syntax error fails the build)."""
    target = build_dir() / (script.stem + ".pyc")
    print(f"{CYAN}Compiling{RESET} {script.name}")
    try:
        py_compile.compile(str(script), cfile=str(target), doraise=True)
    except py_compile.PyCompileError as exc:
        print(f"ERROR: {exc.msg}", file=sys.stderr)
        return 1
    environment = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "job": script.name,
        "compiled": target.name,
    }
    (build_dir() / "environment.json").write_text(json.dumps(environment, indent=2))
    print(f"  {GREEN}✓{RESET} {target.name} ({target.stat().st_size} bytes)")
    print(f"{GREEN}Environment ready{RESET} in {build_dir().name[:12]}")
    return 0


def main(argv: list[str]) -> int:
    """``resolve REQUIREMENTS`` or ``compile SCRIPT``."""
    if len(argv) != 2 or argv[0] not in {"resolve", "compile"}:
        print("usage: prepare_env.py resolve REQUIREMENTS | compile SCRIPT", file=sys.stderr)
        return 2
    path = Path(argv[1])
    return resolve(path) if argv[0] == "resolve" else compile_job(path)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
