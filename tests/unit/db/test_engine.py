"""URL mapping of db.engine (no database needed)."""

from __future__ import annotations

import pytest

from runevents.db.engine import to_sqlalchemy_url
from runevents.exceptions import ConfigError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@db:5432/runs", "postgresql+asyncpg://u:pw@db:5432/runs"),
        ("postgres://u@db/runs", "postgresql+asyncpg://u@db/runs"),
        ("postgresql+asyncpg://u@db/runs", "postgresql+asyncpg://u@db/runs"),
        ("postgresql://u@db/runs?sslmode=require", "postgresql+asyncpg://u@db/runs?ssl=require"),
        ("sqlite:///data/runevents.db", "sqlite+aiosqlite:///data/runevents.db"),
        ("sqlite:////abs/runevents.db", "sqlite+aiosqlite:////abs/runevents.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_to_sqlalchemy_url_maps_user_urls_to_async_drivers(url: str, expected: str) -> None:
    assert to_sqlalchemy_url(url) == expected


def test_to_sqlalchemy_url_keeps_special_characters_of_passwords() -> None:
    assert to_sqlalchemy_url("postgresql://u:p%40ss@h/d") == "postgresql+asyncpg://u:p%40ss@h/d"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://u@h/d", "unsupported database URL scheme 'mysql'"),
        ("postgresql+psycopg2://u@h/d", "unsupported database URL scheme"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
        ("not a url", "invalid database URL"),
        ("", "invalid database URL"),
    ],
)
def test_to_sqlalchemy_url_rejects_other_urls_with_a_clear_message(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        to_sqlalchemy_url(url)
