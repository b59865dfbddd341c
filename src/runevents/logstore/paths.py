"""The key layout of stored logs, built in exactly one place.

``workspaces/{workspace_id}/runs/{run_id}/logs/events.ndjson`` (contract section 3)
and its siblings. Ids are validated again here: a key is only ever built from
ids that passed ``runevents.ids``, so no key can climb out of the storage root.
"""

from __future__ import annotations

from runevents.ids import check_name, check_run_id

LOG_NAME = "events.ndjson"
#: compacted form: independent zstd frames (see eventlog compaction)
COMPRESSED_NAME = "events.ndjson.zst"
#: sparse sequence -> byte offset index of the plain log
INDEX_NAME = "events.ndjson.idx"
#: sequence -> frame index of the compressed log
COMPRESSED_INDEX_NAME = "events.ndjson.zst.idx"
#: search index of the compressed log: an n-gram Bloom filter per frame (eventlog ngrams)
NGRAM_INDEX_NAME = "events.ndjson.zst.ngrams"


def run_prefix(workspace_id: str, run_id: str) -> str:
    """``workspaces/{ws}/runs/{run_id}/logs/``"""
    ws = check_name(workspace_id, "workspace_id")
    return f"workspaces/{ws}/runs/{check_run_id(run_id)}/logs/"


def log_key(workspace_id: str, run_id: str) -> str:
    """Key of the plain NDJSON log."""
    return run_prefix(workspace_id, run_id) + LOG_NAME


def index_key(workspace_id: str, run_id: str) -> str:
    """Key of the plain log's sparse index sidecar."""
    return run_prefix(workspace_id, run_id) + INDEX_NAME


def compressed_key(workspace_id: str, run_id: str) -> str:
    """Key of the compacted log."""
    return run_prefix(workspace_id, run_id) + COMPRESSED_NAME


def compressed_index_key(workspace_id: str, run_id: str) -> str:
    """Key of the compacted log's frame index."""
    return run_prefix(workspace_id, run_id) + COMPRESSED_INDEX_NAME


def ngram_index_key(workspace_id: str, run_id: str) -> str:
    """Key of the compacted log's search index (n-gram filters per frame)."""
    return run_prefix(workspace_id, run_id) + NGRAM_INDEX_NAME


def parse_log_key(key: str) -> tuple[str, str, str] | None:
    """``(workspace_id, run_id, file name)`` for a key under ``workspaces/``, else None."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] != "workspaces" or parts[2] != "runs" or parts[4] != "logs":
        return None
    try:
        run_prefix(parts[1], parts[3])
    except Exception:
        return None
    return parts[1], parts[3], parts[5]
