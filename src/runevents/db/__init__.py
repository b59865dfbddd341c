"""The runs database: engine and migrations (``engine``), schema (``tables``),
row converters (``rows``) and every SQL statement (``repository``)."""

from __future__ import annotations

from runevents.db.engine import Database, open_database, to_sqlalchemy_url
from runevents.db.repository import RunRepository

__all__ = ["Database", "RunRepository", "open_database", "to_sqlalchemy_url"]
