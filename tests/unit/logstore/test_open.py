"""``open_log_store``: the scheme -> backend table."""

from __future__ import annotations

import pytest

from runevents.exceptions import InvalidInput, StorageError
from runevents.logstore import BACKENDS, open_log_store


def test_every_scheme_has_a_backend_entry() -> None:
    assert set(BACKENDS) == {"file", "memory", "s3"}


@pytest.mark.parametrize("url", ["ftp://x/y", "/plain/path", "", "gs://bucket"])
def test_unknown_schemes_are_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput, match="unsupported storage URL"):
        open_log_store(url)


def test_a_backend_that_cannot_be_imported_is_a_clear_storage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(BACKENDS, "s3", ("runevents.logstore.no_such_module", "S3LogStore"))
    with pytest.raises(StorageError, match="s3:// storage backend is not available"):
        open_log_store("s3://bucket/prefix")
