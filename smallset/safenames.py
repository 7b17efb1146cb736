"""Text from data or tags made safe for where it goes: file names, a terminal, Markdown.

Class names, method names, tags and source strings come from files and users; none of them may pick a
file's directory, move the terminal's cursor or inject HTML into a report.
"""
from __future__ import annotations

import html
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_filename(text: object, max_len: int = 80, fallback: str = "x") -> str:
    """One file-name component from arbitrary text: ASCII letters, digits and ``. _ = + -`` are kept,
    every other run of characters (``/``, ``\\``, spaces, ``<``, control characters…) becomes ``-``; no
    leading dot or dash (no hidden files, no options), never empty, ``.`` or ``..``, at most ``max_len``."""
    s = _UNSAFE.sub("-", unicodedata.normalize("NFKC", str(text)))
    s = s.strip(".-")[:max_len].rstrip(".-")
    return s if s and s not in (".", "..") else fallback


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def terminal_safe(text: object) -> str:
    """``text`` with control and format characters (escape sequences, bidi overrides, line breaks)
    written as ``\\xNN``/``\\uNNNN``, so printing it cannot move the cursor, recolour or rewrite the terminal."""
    return "".join(_escape_char(ch) if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
                   else ch for ch in str(text))


def markdown_text(text: object) -> str:
    """``text`` for a Markdown table cell or line: terminal-safe, HTML-escaped (``<img …>`` stays text), and
    with ``\\ | [ ] `` ` backslash-escaped (no broken table, no injected link or code span)."""
    s = html.escape(terminal_safe(text), quote=False)
    return re.sub(r"([\\|\[\]`])", r"\\\1", s)
