"""Printed JSON: exactly ``json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)``,
fast for documents with long lists of flat records.

Python's json module encodes an indented document in Python, value by value (its C
encoder has no indentation), which costs ~25 us per record: 0.5 s for the 21,845 layers
of a large adapter in ``lorascope inspect --format json``, as long as scanning the
file.  Lists of at least :data:`MIN_ITEMS` non-empty dicts of scalars are instead encoded
by the C encoder in one call, with the indented line break as its item separator, and
the brackets of each record moved onto their own lines; the rest of the document goes
through ``json.dumps`` as before, around placeholders.
"""
from __future__ import annotations

import json
import os
from typing import Any

MIN_ITEMS = 32                 # shorter lists are not worth the detour
_SCALARS = (str, int, float, bool, type(None))


def dumps(doc: Any) -> str:
    """``json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)``, the same text."""
    lists: list[list] = []
    mark = f"\x00records-{os.urandom(8).hex()}-"     # no string of the document is this
    marked = _mark(doc, lists, mark)
    text = json.dumps(marked, indent=2, ensure_ascii=False, allow_nan=False)
    if not lists:
        return text
    parts = []
    pos = 0
    for k, records in enumerate(lists):
        token = json.dumps(f"{mark}{k}")
        at = text.index(token, pos)
        line = i = text.rfind("\n", 0, at) + 1
        while text[i] == " ":                      # the spaces opening the line
            i += 1
        indent = i - line
        parts.append(text[pos:at])
        parts.append(_records(records, indent))
        pos = at + len(token)
    parts.append(text[pos:])
    return "".join(parts)


def _mark(obj: Any, lists: list[list], mark: str) -> Any:
    """``obj`` with each long list of flat records replaced by a placeholder string."""
    if isinstance(obj, dict):
        return {k: _mark(v, lists, mark) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) >= MIN_ITEMS and _flat_records(obj):
            lists.append(obj)
            return f"{mark}{len(lists) - 1}"
        return [_mark(v, lists, mark) for v in obj]
    return obj


_SCALAR_TYPES = frozenset(_SCALARS)
_STR = frozenset((str,))


def _flat_records(items) -> bool:
    for d in items:
        if type(d) is not dict or not d:
            return False
        if not (_SCALAR_TYPES.issuperset(map(type, d.values())) and _STR.issuperset(map(type, d))):
            for k, v in d.items():              # subclasses of the scalar types are scalars
                if type(k) is not str or not isinstance(v, _SCALARS):
                    return False
    return True


def _records(records: list[dict], indent: int) -> str:
    """A list of flat dicts as ``json.dumps(..., indent=2)`` writes it when the list's
    line is indented by ``indent`` spaces."""
    inner, item = " " * (indent + 2), " " * (indent + 4)
    text = json.dumps(records, ensure_ascii=False, allow_nan=False, separators=(",\n" + item, ": "))
    # '[{"a": 1,\n<item>"b": 2},\n<item>{"a": ...}]': a record ends with '}' and the next
    # starts with '{' only at a record boundary (values are scalars; a raw newline only
    # occurs in separators, never inside a string)
    body = text[2:-2].replace("},\n" + item + "{", "\n" + inner + "},\n" + inner + "{\n" + item)
    return "[\n" + inner + "{\n" + item + body + "\n" + inner + "}\n" + " " * indent + "]"
