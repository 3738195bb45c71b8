"""Strings that came from the data, made visible-safe for a terminal.

A file name, a caption, a log line or a metadata value may carry a carriage return
that overprints the verdict, an escape sequence (clear screen, window title, OSC-8
link), a backspace, or a bidi override that reverses what follows.  :func:`visible`
shows each such character as an escape (``\\r``, ``\\x1b``, ``\\u202e``) instead of
dropping it, so evidence stays truthful and nothing reaches the terminal as a
command.  :func:`visible_tree` does that to every string (and key) of a report
document; :func:`json_safe` does the same job for printed JSON, where the escapes are
JSON's own (``\\u202e``), so the document still decodes to the exact strings.

Escaped: every character of Unicode's categories Cc, Cf, Zl and Zp: C0 and C1 control
characters and DEL (tab and newline too: a field is one line), the bidi embeddings,
overrides, isolates and marks (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069),
invisible format characters (soft hyphen, U+180E, zero-width space, U+2060-U+2064,
byte-order mark, interlinear annotations, tag characters U+E0000-U+E007F, ...) and the
line/paragraph separators U+2028/U+2029.  The zero-width joiner and non-joiner
(U+200C/U+200D) are kept: emoji and several scripts need them, and they move nothing.
Backslashes are not doubled.  Lone surrogates (names that are not UTF-8) are left to
the writer, which shows them as ``?``.
"""
from __future__ import annotations

import re
from typing import Any

# DEL and C1 controls, bidi controls, invisible format characters, line/paragraph separators
# (every character of Unicode's categories Cc, Cf, Zl, Zp but ZWJ and ZWNJ; tests check
# the list against unicodedata)
_INVISIBLE = ("\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
              "\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
              "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
              "\U0001d173-\U0001d17a\U000e0000-\U000e007f")
_UNSAFE = re.compile(f"[\x00-\x1f{_INVISIBLE}]")
# in printed JSON, C0 characters inside strings are already json's \u escapes, and
# outside them only the indentation's newlines and spaces occur
_JSON_UNSAFE = re.compile(f"[{_INVISIBLE}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named:
        return named
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def visible(text: Any) -> str:
    """``text`` (str() of it) with every control, bidi and invisible format character
    shown as an escape."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s)


def visible_tree(obj: Any) -> Any:
    """A copy of a JSON-like document with :func:`visible` applied to every string,
    dictionary keys included; numbers, booleans and None are kept."""
    if isinstance(obj, str):
        return _UNSAFE.sub(_escape, obj)
    if isinstance(obj, dict):
        return {visible_tree(k) if isinstance(k, str) else k: visible_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [visible_tree(v) for v in obj]
    return obj


def _json_escape(m: re.Match) -> str:
    o = ord(m.group())
    if o < 0x10000:
        return f"\\u{o:04x}"
    o -= 0x10000                           # JSON spells astral characters as a surrogate pair
    return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"


def json_safe(text: str) -> str:
    """Printed JSON (from ``json.dumps(..., ensure_ascii=False)``) with the characters
    json leaves raw (DEL, C1 controls, bidi and invisible format characters) written as
    ``\\uXXXX`` escapes: the same document for a parser, inert on a terminal.  They can
    only occur inside strings, where such an escape is valid."""
    if text.isascii() and "\x7f" not in text:       # DEL is the one ASCII character of
        return text                                 # the set: skip the scan of 5 MB
    return _JSON_UNSAFE.sub(_json_escape, text)
