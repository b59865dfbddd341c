"""What the CLI may print (runevents.cli_output): producer text on a terminal, credentials."""

from __future__ import annotations

import pytest

from runevents.cli_output import redact, terminal_safe

ESC = "\x1b"

#: hostile producer text -> what reaches the terminal (colours kept)
HOSTILE = [
    # OSC 52 clipboard write, OSC 0 window title (BEL and ST ends), a screen clear
    (f"a{ESC}]52;c;ZWNobyBwd25lZA=={chr(7)}b", "ab"),
    (f"a{ESC}]0;TITLE{ESC}\\b", "ab"),
    (f"a{ESC}[2Jb{ESC}[H{ESC}[?1049h{ESC}[K", "ab"),
    # DCS, APC, PM, SOS strings
    (f"a{ESC}P1$r0m{ESC}\\b{ESC}_x{ESC}\\{ESC}^y{ESC}\\{ESC}Xz{ESC}\\", "ab"),
    # two-byte and charset escapes (ESC c resets the terminal)
    (f"a{ESC}cb{ESC}(0c{ESC}7", "abc"),
    # 8-bit C1 forms: CSI, OSC ... ST
    ("a\x9b2Jb\x9d0;t\x9cc", "abc"),
    # a lone ESC, an unterminated OSC, CR/BS/BEL/DEL/NUL and a stray C1 become visible
    (f"a{ESC}", "a␛"),
    (f"a{ESC}{ESC}", "a␛␛"),
    (f"{ESC}]52;c;QUJD", "52;c;QUJD"),
    ("fake\rreal\b\x07\x7f\x00", "fake␍real␈␇␡␀"),
    ("a\x85b\x9a", "a␛Eb␛Z"),
    # an escape split around a removed sequence does not join into a new one
    (f"{ESC}{ESC}[2J[2J", "␛[2J"),
    # tab and newline pass (a logged traceback is one multi-line message)
    ("a\tb\nc", "a\tb\nc"),
    # SGR colours and styles are kept
    (
        f"{ESC}[1;31mred{ESC}[0m {ESC}[38;5;208mx{ESC}[m",
        f"{ESC}[1;31mred{ESC}[0m {ESC}[38;5;208mx{ESC}[m",
    ),
]


@pytest.mark.parametrize(("text", "shown"), HOSTILE)
def test_terminal_escape_injection_only_sgr_reaches_the_terminal(text: str, shown: str) -> None:
    """Regression: a producer's OSC 52 / OSC 0 / ESC[2J reached the terminal of `tail`."""
    assert terminal_safe(text, keep_sgr=True) == shown
    without = terminal_safe(text, keep_sgr=False)
    assert ESC not in without and without == terminal_safe(shown, keep_sgr=False)


@pytest.mark.parametrize("text", [t for t, _ in HOSTILE])
def test_terminal_safe_leaves_no_control_but_sgr(text: str) -> None:
    out = terminal_safe(text, keep_sgr=True)
    # every ESC left opens an SGR sequence; no other control character is left
    rest = out
    for part in out.split(ESC)[1:]:
        assert part.startswith("[") and "m" in part, out
        rest = rest.replace(ESC + part[: part.index("m") + 1], "")
    assert not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F for c in rest)


def test_a_password_in_a_url_is_never_shown() -> None:
    server = "http://user:s%40cret@host:8000"
    message = f"cannot reach the server at {server} (s@cret rejected); see https://tok@x/y"
    shown = redact(message, server)
    assert "cret" not in shown and "tok" not in shown and "user" not in shown
    assert "http://***@host:8000" in shown and "https://***@x/y" in shown
    assert redact("http://host:8000/workspaces/a", "http://host:8000") == (
        "http://host:8000/workspaces/a"
    )
