"""Copy the machine line and the table of ``bench/results/latest.md`` into README.md.

Run after a full ``make bench``: the README shows the last full run, between
the ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers. A quick run
(``--quick``) or a partial one (``--only``) is refused, so the README never
shows smoke-test sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def section(latest: str) -> str:
    """The lines of ``latest`` the README shows: machine, date, mode and the table."""
    lines = latest.splitlines()
    if "Mode: full" not in lines:
        raise SystemExit(
            "latest.md is not from a full run (make bench); the README keeps its table"
        )
    machine = next(line for line in lines if line.startswith("Machine:"))
    when = [line for line in lines if line.startswith(("Date:", "Suite wall time:"))]
    table = [line for line in lines if line.startswith("|")]
    if not table:
        raise SystemExit("latest.md holds no table")
    link = "full table with notes: [bench/results/latest.md](bench/results/latest.md)"
    return "\n".join(
        [
            machine,
            " · ".join([*when, link]),
            "",
            "![append and replay rates](bench/results/rates.png)",
            "",
            *table,
        ]
    )


def embed(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"README.md lacks the {BEGIN} / {END} markers")
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main() -> None:
    latest = (ROOT / "bench" / "results" / "latest.md").read_text(encoding="utf-8")
    readme_path = ROOT / "README.md"
    readme_path.write_text(embed(readme_path.read_text(encoding="utf-8"), section(latest)))
    print(f"README.md: table from {ROOT / 'bench' / 'results' / 'latest.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
