"""The runs database: engine and migrations (``engine``), schema (``tables``),
row converters (``rows``) and every SQL statement on runs (``repository``: one
``RunRepository`` made of one mixin module per concept, see its docstring)."""

from __future__ import annotations

from runevents.db.engine import Database, open_database, to_sqlalchemy_url
from runevents.db.repository import RunRepository

__all__ = ["Database", "RunRepository", "open_database", "to_sqlalchemy_url"]
