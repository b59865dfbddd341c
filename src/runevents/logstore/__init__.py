"""Log storage backends, picked by URL scheme from one explicit table.

``open_log_store("file:///var/lib/runevents")``, ``open_log_store("s3://bucket/prefix")``,
``open_log_store("memory://")``. Each backend class has ``from_url(url, **kwargs)``.
Backends are imported only when used, so an optional one (S3) that is missing
or broken never breaks the package.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from runevents.exceptions import InvalidInput, StorageError
from runevents.logstore.base import READ_CHUNK, LogStore, ObjectInfo

#: URL scheme -> (module, class); the whole registry
BACKENDS: dict[str, tuple[str, str]] = {
    "file": ("runevents.logstore.local", "LocalLogStore"),
    "memory": ("runevents.logstore.memory", "MemoryLogStore"),
    "s3": ("runevents.logstore.s3", "S3LogStore"),
}

__all__ = ["BACKENDS", "READ_CHUNK", "LogStore", "ObjectInfo", "open_log_store"]


def open_log_store(url: str, **kwargs: Any) -> LogStore:
    """Open the backend for ``url``'s scheme. InvalidInput for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    entry = BACKENDS.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise InvalidInput(f"unsupported storage URL {url!r}: use one of {known}")
    module_name, class_name = entry
    try:
        backend = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise StorageError(f"the {scheme}:// storage backend is not available: {exc}") from exc
    store: LogStore = backend.from_url(url, **kwargs)
    return store
