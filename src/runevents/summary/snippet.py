"""The console snippet: the tail of a run's console output, at most 4 KiB of UTF-8.

The summary's ``console_snippet`` (and the run row's ``last_console_snippet``)
is the last messages of the run joined by ``\\n``. Kept apart from the builder
because it is its own small algorithm with its own bound: it keeps just enough
of the latest messages to fill the byte window, counting characters rather
than encoding every line, and cuts on a character boundary only when read.
"""

from __future__ import annotations

from collections import deque

#: cap of ``console_snippet`` (bytes of UTF-8), the contract's "at most 4 KiB"
SNIPPET_BYTES = 4096


class ConsoleSnippet:
    """The latest console messages: just enough to fill SNIPPET_BYTES of UTF-8."""

    __slots__ = ("_chars", "_messages")

    def __init__(self) -> None:
        self._messages: deque[str] = deque()
        #: characters in _messages, counting one per joining newline
        self._chars = 0

    def copy(self) -> ConsoleSnippet:
        """An independent snippet with the same messages."""
        twin = ConsoleSnippet()
        twin._messages = deque(self._messages)
        twin._chars = self._chars
        return twin

    def keep(self, message: str) -> None:
        """Add the next message; drop the ones the window no longer reaches."""
        # Count characters, not bytes, to avoid encoding every line: a character
        # is at least one UTF-8 byte, so messages are only dropped once the ones
        # after them certainly fill the byte window. Encoding happens on read.
        if len(message) >= SNIPPET_BYTES:
            # This message alone fills the window: everything before it is out.
            self._messages.clear()
            self._chars = 0
            message = message[-SNIPPET_BYTES:]
        elif self._messages:
            self._chars += 1  # the "\n" joining it to the previous message
        self._messages.append(message)
        self._chars += len(message)
        snippet = self._messages
        while len(snippet) > 1 and self._chars - len(snippet[0]) - 1 >= SNIPPET_BYTES:
            self._chars -= len(snippet.popleft()) + 1

    def keep_tail(self, messages: list[str]) -> None:
        """Add a batch's messages, in order: the same as :meth:`keep` of each, but only
        the batch's last SNIPPET_BYTES characters are looked at."""
        # Only a tail of more than SNIPPET_BYTES characters can reach the snippet.
        start = len(messages)
        chars = 0
        while start > 0 and chars <= SNIPPET_BYTES:
            start -= 1
            chars += len(messages[start]) + 1
        for message in messages[start:]:
            self.keep(message)

    @property
    def text(self) -> str:
        """The messages joined by ``\\n``, at most SNIPPET_BYTES of UTF-8.

        Cut on a character boundary at the start, so it may be a few bytes shorter.
        """
        # "replace": a str may hold a lone surrogate, which UTF-8 cannot encode.
        tail = "\n".join(self._messages).encode("utf-8", "replace")[-SNIPPET_BYTES:]
        start = 0
        while start < len(tail) and tail[start] & 0xC0 == 0x80:  # UTF-8 continuation byte
            start += 1
        return tail[start:].decode("utf-8")
