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


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` (bare NaN / Infinity accepted, as HF writes them) that raises
    ValueError for invalid JSON and NestedTooDeep for deep nesting."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise NestedTooDeep(max_depth) from None
    return check_depth(obj, max_depth)


def raw_decode(decoder: json.JSONDecoder, text: str, pos: int = 0, *,
               max_depth: int = MAX_DEPTH) -> tuple[Any, int]:
    """``decoder.raw_decode(text, pos)`` with the same guarantees as :func:`loads`."""
    try:
        obj, end = decoder.raw_decode(text, pos)
    except RecursionError:
        raise NestedTooDeep(max_depth) from None
    return check_depth(obj, max_depth), end
