"""A small, bounded reader of the protobuf wire format (no generated code).

Only what the record-log readers need: the fields of one message as ``(number,
wire type, value)`` where a varint is an int, a fixed64 / fixed32 is its raw 8 / 4
bytes and a length-delimited field is a ``bytes`` slice (decode nested messages by
calling :func:`fields` again, so nesting is as deep as the caller's schema, never
driven by the input).  Malformed input raises :class:`WireError`; nothing else.
"""
from __future__ import annotations

import struct

VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5
MAX_FIELDS = 1 << 20            # fields read from one message before giving up

_D = struct.Struct("<d").unpack_from


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); at most 10 bytes."""
    result = shift = 0
    for i in range(pos, min(pos + 10, end)):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    raise WireError(f"bad varint at {pos}")


def fields(buf: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, object]]:
    """Every field of one message, in order."""
    end = len(buf) if end is None else end
    out: list[tuple[int, int, object]] = []
    pos = start
    while pos < end:
        key, pos = varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise WireError("field number 0")
        if wt == VARINT:
            v, pos = varint(buf, pos, end)
        elif wt == LEN:
            n, pos = varint(buf, pos, end)
            if n > end - pos:
                raise WireError(f"length {n} past the end of the message")
            v = bytes(buf[pos:pos + n])
            pos += n
        elif wt == FIXED64:
            if pos + 8 > end:
                raise WireError("fixed64 past the end")
            v = bytes(buf[pos:pos + 8])
            pos += 8
        elif wt == FIXED32:
            if pos + 4 > end:
                raise WireError("fixed32 past the end")
            v = bytes(buf[pos:pos + 4])
            pos += 4
        else:
            raise WireError(f"wire type {wt} not supported")
        out.append((num, wt, v))
        if len(out) > MAX_FIELDS:
            raise WireError("too many fields")
    return out


def first(fs: list, num: int, default=None):
    for n, _, v in fs:
        if n == num:
            return v
    return default


def last(fs: list, num: int, default=None):
    for n, _, v in reversed(fs):
        if n == num:
            return v
    return default


def all_of(fs: list, num: int) -> list:
    return [v for n, _, v in fs if n == num]


def text(v) -> str | None:
    if not isinstance(v, bytes):
        return None
    return v.decode("utf-8", errors="replace")


def signed(v: int) -> int:
    """An int64 varint as signed."""
    return v - (1 << 64) if v >= 1 << 63 else v


def zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def double(v) -> float | None:
    return _D(v)[0] if isinstance(v, bytes) and len(v) == 8 else None
