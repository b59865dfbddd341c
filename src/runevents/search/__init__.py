"""Search: within one run (``console``) and across a workspace's runs (``engine``).

``pattern`` compiles what is looked for (plain text or RE2), ``hits`` matches
one chunk of lines, ``filters`` loads the n-gram index that compaction stores
beside each compressed log (``eventlog/ngrams.py``), and ``engine`` walks the
runs newest first, skipping the frames the index rules out.
"""

from runevents.search.console import search_console
from runevents.search.engine import SearchRequest, WorkspaceSearch
from runevents.search.hits import Filters
from runevents.search.pattern import InvalidPattern, Pattern

__all__ = [
    "Filters",
    "InvalidPattern",
    "Pattern",
    "SearchRequest",
    "WorkspaceSearch",
    "search_console",
]
