"""The bundled demo configuration (``runevents serve --demo``).

``runevents.toml`` registers workspace ``demo``, configuration ``extract``: a
build step (``prepare_env.py``: checks and locks the job's stdlib-only
"requirements" and byte-compiles the job -- offline, with nothing but Python)
and a run (``extract.py``) that behaves like a spreadsheet extraction: phases,
coloured console output, stderr warnings, ``run.table.summary`` per table,
``run.validation.*`` telemetry and an occasional failure. Commands use the
``{python}`` placeholder (see :mod:`runevents.executor`), so the demo runs with
the interpreter that runs the server.

Run options (JSON, ``POST .../runs`` body ``{"options": {...}}``):

* ``speed`` (number, default 1): the run lasts about 20-40 s divided by ``speed``;
* ``fail`` (bool): ``true`` always fails, ``false`` never; absent: 1 run in 5 fails;
* ``seed`` (int or str, default the run id): makes tables, issues and failures repeatable.
"""

from __future__ import annotations

from pathlib import Path


def demo_config_path() -> Path:
    """Path of the bundled demo ``runevents.toml`` (inside the installed package)."""
    return Path(__file__).resolve().parent / "runevents.toml"
