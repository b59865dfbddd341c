"""docs/grafana-dashboard.json and the alerts of docs/operations.md use only exported metrics.

Every PromQL expression (dashboard targets, ``expr:`` of the alert rules,
```` ```promql ```` blocks) must name at least one metric, and every metric it
names must be one ``GET /metrics`` declares (a ``# TYPE`` line: a counter's
or gauge's name, or a histogram's ``_bucket``/``_count``/``_sum`` series),
so a renamed metric breaks this test instead of a dashboard nobody looks at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

DOCS = Path(__file__).resolve().parents[3] / "docs"
#: metric names (ours and the client library's process_* ones); label names never start so
_METRIC = re.compile(r"\b((?:runevents|process)_[a-z0-9_]+)")
_HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 20
    return exprs


def document_expressions() -> list[str]:
    text = (DOCS / "operations.md").read_text()
    exprs = re.findall(r"```promql\n(.*?)```", text, re.S)
    # alert rules: `expr: ...` or a folded `expr: >-` block up to the next key
    for match in re.finditer(r"expr: (>-\n(?:\s{10,}.*\n)+|.*)", text):
        exprs.append(match.group(1).removeprefix(">-"))
    assert len(exprs) >= 10
    return exprs


def exported(exposition: str) -> set[str]:
    """Every series name the exposition declares."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SERIES)
        else:
            names.add(name)
    return names


async def test_every_expression_names_exported_metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    available = exported(response.text)
    assert "runevents_runs" in available  # the database gauges are in the same answer
    for expr in dashboard_expressions() + document_expressions():
        named = set(_METRIC.findall(expr))
        assert named, f"no metric in {expr!r}"
        unknown = named - available
        assert not unknown, f"{expr!r} uses {sorted(unknown)}, which /metrics does not export"
        assert expr.count("(") == expr.count(")"), f"unbalanced parentheses: {expr!r}"


def test_the_check_catches_a_renamed_metric() -> None:
    exposition = "# TYPE runevents_fsync_seconds histogram\n# TYPE runevents_runs gauge\n"
    available = exported(exposition)
    assert {"runevents_fsync_seconds_bucket", "runevents_runs"} <= available
    assert "runevents_fsync_seconds" not in available  # a histogram has no bare series
    assert set(_METRIC.findall("rate(runevents_fsync_second_bucket[5m])")) - available
