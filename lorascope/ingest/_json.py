"""JSON for the parsers: never a RecursionError, never a value nested deeper than
:data:`MAX_DEPTH`.

Python's json decoder recurses once per nesting level, so ``[[[[...`` 100,000 deep
raises RecursionError, and a value that parses just below the interpreter's limit
(whose exact depth depends on how deep the caller's stack already is) would make
``str()``, ``copy.deepcopy`` or the report writer recurse later.  :func:`loads` and
:func:`raw_decode` turn both into :class:`NestedTooDeep` (a ValueError, so every
``except ValueError`` of a parser catches it) with one message, whatever the stack.
Real trainer files nest at most five or six levels.
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64


class NestedTooDeep(ValueError):
    def __init__(self, limit: int = MAX_DEPTH):
        super().__init__(f"nested more than {limit} levels deep")


def check_depth(obj: Any, limit: int = MAX_DEPTH) -> Any:
    """``obj`` itself, or NestedTooDeep when a list or dict in it sits deeper than
    ``limit`` levels.  Iterative: visits each container once, skips scalars.  For a
    tree (what json, tomllib build); YAML's aliases share containers: see
    :func:`check_depth_shared`."""
    if not isinstance(obj, (list, dict)):
        return obj
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            raise NestedTooDeep(limit)
        for v in (o.values() if isinstance(o, dict) else o):
            if isinstance(v, (list, dict)):
                stack.append((v, d + 1))
    return obj


def check_depth_shared(obj: Any, limit: int = MAX_DEPTH) -> Any:
    """check_depth for a graph whose containers may be shared (YAML anchors and
    aliases: a billion-laughs document is a few hundred containers reached 9^10 ways)
    or cyclic (``&a [*a]``: the back edge is not followed): each container's height
    is computed once."""
    if not isinstance(obj, (list, dict)):
        return obj

    def kids(o):
        return iter(o.values() if isinstance(o, dict) else o)

    height: dict[int, int] = {}
    on_path = {id(obj)}
    stack: list[list] = [[obj, kids(obj), 0]]
    while stack:
        frame = stack[-1]
        for v in frame[1]:
            if not isinstance(v, (list, dict)):
                continue
            h = height.get(id(v))
            if h is not None:
                if len(stack) + h > limit:
                    raise NestedTooDeep(limit)
                frame[2] = max(frame[2], h)
                continue
            if id(v) in on_path:     # a cycle: the flattening that reads configs stops at it
                continue
            if len(stack) + 1 > limit:
                raise NestedTooDeep(limit)
            on_path.add(id(v))
            stack.append([v, kids(v), 0])
            break
        else:
            stack.pop()
            on_path.discard(id(frame[0]))
            h = frame[2] + 1
            height[id(frame[0])] = h
            if stack:
                stack[-1][2] = max(stack[-1][2], h)
    return obj


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, walk: bool = True) -> Any:
    """``json.loads`` (bare NaN / Infinity accepted, as HF writes them) that raises
    ValueError for invalid JSON and NestedTooDeep for deep nesting.  ``walk=False``
    skips the depth walk (the decoder's own limit still holds) for a caller that runs
    :func:`check_depth` on the parts it keeps: a safetensors header of 60k tensors is
    200k small containers, and walking them costs more than parsing them."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise NestedTooDeep(max_depth) from None
    return check_depth(obj, max_depth) if walk else obj


def raw_decode(decoder: json.JSONDecoder, text: str, pos: int = 0, *,
               max_depth: int = MAX_DEPTH) -> tuple[Any, int]:
    """``decoder.raw_decode(text, pos)`` with the same guarantees as :func:`loads`."""
    try:
        obj, end = decoder.raw_decode(text, pos)
    except RecursionError:
        raise NestedTooDeep(max_depth) from None
    return check_depth(obj, max_depth), end


class TextStream:
    """A JSON document read from a text file in bounded pieces, value by value.

    ``buf`` holds at most one piece of the file plus the value being decoded, so a
    document of any size is walked in memory of its largest value (at most
    ``max_value`` characters: a larger one is a ValueError).  The caller drives the
    structure: :meth:`skip` whitespace, :meth:`take` a punctuation character, decode a
    :meth:`value` (any JSON value, deep nesting refused as in :func:`loads`)."""

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, fh, *, chunk: int = 1 << 20, max_value: int = 64 << 20,
                 max_depth: int = MAX_DEPTH):
        self.fh, self.chunk, self.max_value, self.max_depth = fh, chunk, max_value, max_depth
        self.buf, self.pos, self.eof = "", 0, False
        self.consumed = 0                # characters dropped from the front of buf
        self.dec = json.JSONDecoder()

    def _fill(self, want: int | None = None) -> bool:
        """Append at least one more piece (``want`` characters if given); False at EOF."""
        if self.eof:
            return False
        if self.pos:
            self.consumed += self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        data = self.fh.read(max(self.chunk, want or 0))
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def offset(self) -> int:
        """Characters of the document before the current position."""
        return self.consumed + self.pos

    def skip(self) -> None:
        while True:
            self.pos = self._WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._fill():
                return

    def peek(self) -> str | None:
        self.skip()
        return self.buf[self.pos] if self.pos < len(self.buf) else None

    def take(self, ch: str) -> bool:
        if self.peek() == ch:
            self.pos += 1
            return True
        return False

    def value(self, check_depth: bool = True) -> Any:
        """The next JSON value.  ValueError when it is invalid, cut short by the end of the
        file, or longer than ``max_value``; NestedTooDeep when nested too deeply for the
        decoder (and, with ``check_depth``, deeper than ``max_depth``: a caller that only
        reads scalars out of the value may skip that walk)."""
        self.skip()
        want = self.chunk
        while True:
            try:
                if check_depth:
                    obj, end = raw_decode(self.dec, self.buf, self.pos, max_depth=self.max_depth)
                else:
                    obj, end = self.dec.raw_decode(self.buf, self.pos)
            except NestedTooDeep:
                raise
            except RecursionError:
                raise NestedTooDeep(self.max_depth) from None
            except ValueError:
                if len(self.buf) - self.pos > self.max_value:
                    raise ValueError(f"a value longer than {self.max_value} characters") from None
                want *= 2                # a large value: read in doubling pieces, not a
                if self._fill(want):     # retry per megabyte
                    continue
                raise
            if end == len(self.buf) and not self.eof and self.buf[self.pos] not in "[{\"":
                # a number cut at the end of the piece decodes, shorter: read on
                if self._fill():
                    continue
            self.pos = end
            return obj

    def rest(self):
        """The text from the current position to the end, piece by piece."""
        if self.pos < len(self.buf):
            yield self.buf[self.pos:]
        self.buf, self.pos = "", 0
        while not self.eof:
            data = self.fh.read(self.chunk)
            if not data:
                self.eof = True
                break
            yield data
