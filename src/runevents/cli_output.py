"""What the CLI may print: producer text made safe for a terminal, URLs without credentials.

Console lines, phase names, failure messages and search hits are written by
whoever produces a run's events (an external producer is anyone with a write
token). Printed raw, their escape sequences drive the reader's terminal: OSC 52
writes the clipboard, OSC 0 sets the window title, ``ESC[2J`` clears the screen,
a lone ``\\r`` overwrites what was shown. :func:`terminal_safe` lets through only
SGR colour/style sequences (``ESC [ params m``, README: ``run`` and ``tail``
"keep ANSI colours on a terminal"); every other complete escape sequence is
removed, and every control character left is shown as its Unicode control
picture (``␛``, ``␍``, ``␇``), so nothing else reaches the terminal as a control.

Tab and newline pass: they cannot rewrite what is already on the screen, and a
logged record's traceback (one ``console.line`` from the logging handler) needs
its newlines to be read.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

#: the only sequences a terminal may receive: SGR (colours, bold, ...), 7-bit form
SGR = re.compile(r"\x1b\[[0-9;:]*m")
#: what is printed instead (one alternative matches at each position, left to right)
_UNSAFE = re.compile(
    # CSI, 7-bit or 8-bit: SGR (kept or not), cursor moves, screen clears, modes
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    # OSC / DCS / SOS / PM / APC strings up to their BEL or ST (clipboard, title, ...)
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    # any other escape sequence (ESC c reset, ESC 7, charset selection ESC ( 0, ...)
    r"|\x1b[ -/]*[0-~]"
    # a control character on its own (lone ESC, CR, BS, BEL, DEL, C1), tab and newline aside
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def _visible(char: str) -> str:
    """A control character as something that prints: its Unicode control picture."""
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ .. ␟ (ESC is ␛)
    if code == 0x7F:
        return "\u2421"  # ␡
    # a C1 control is ESC + (code - 0x40) in 7 bits: U+009B (CSI) shows as "␛["
    return "\u241b" + chr(code - 0x40)


def terminal_safe(text: str, *, keep_sgr: bool) -> str:
    """``text`` with nothing but SGR sequences (only when ``keep_sgr``) to drive a terminal."""

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if len(found) == 1:
            return _visible(found)
        return found if keep_sgr and SGR.fullmatch(found) else ""

    return _UNSAFE.sub(replace, text)


#: ``scheme://userinfo@`` in any text (an error message quoting a URL)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*@")


def redact(text: str, url: str | None = None) -> str:
    """``text`` with the userinfo of every URL in it, and ``url``'s password, as ``***``.

    ``--server http://user:pw@host`` must not put ``pw`` in an error message or a
    printed link; the password alone is also replaced, as a message may quote it
    without its URL (decoded or not).
    """
    out = _USERINFO.sub(r"\g<scheme>***@", text)
    if url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        for secret in {password, unquote(password)} if password else ():
            out = out.replace(secret, "***")
    return out
