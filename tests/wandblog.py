"""A W&B record-log writer for tests, independent of lorascope's reader.

Records are protobuf bytes built field by field (``enc``); ``write`` lays them out the
way wandb's ``sdk/internal/datastore.py`` ``_write_data`` does (32 KiB blocks, 7-byte
chunk headers, FULL or FIRST/MIDDLE.../LAST, zero padding when fewer than 7 bytes are
left in a block, crc = zlib.crc32(data, crc32(type byte))).
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

BLOCK, HDR = 32768, 7


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, value) -> bytes:
    """int -> varint field; bytes/str -> length-delimited field."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return varint((num << 3) | 2) + varint(len(value)) + value


def double(num: int, x: float) -> bytes:
    return varint((num << 3) | 1) + struct.pack("<d", x)


def item(key, value_json: str, nested: bool = True) -> bytes:
    """A HistoryItem / ConfigItem: the key (nested_key parts when a list, ``key`` when
    ``nested=False``) and its value as JSON text ("1.5", "NaN", '"text"', ...)."""
    if isinstance(key, (list, tuple)):
        k = b"".join(field(2, p) for p in key)
    else:
        k = field(2 if nested else 1, key)
    return k + field(16, value_json)


def history(num: int, items: list[bytes], step: int | None = None) -> bytes:
    body = b"".join(field(1, it) for it in items)
    body += field(2, field(1, step) if step else b"")
    return field(1, num) + field(2, body)


def config_record(num: int, items: list[bytes]) -> bytes:
    return field(1, num) + field(5, b"".join(field(1, it) for it in items))


def metric(num: int, name: str = "", glob: str = "", step_metric: str = "", sync: bool = False) -> bytes:
    body = (field(1, name) if name else b"") + (field(2, glob) if glob else b"") \
        + (field(4, step_metric) if step_metric else b"") + (field(6, field(1, 1)) if sync else b"")
    return field(1, num) + field(12, body)


def summary(num: int, items: list[bytes]) -> bytes:
    return field(1, num) + field(3, b"".join(field(1, it) for it in items))


def output(num: int, line: str, raw: bool = True) -> bytes:
    return field(1, num) + field(13 if raw else 4, field(1, 1) + field(3, line))


def write(path: Path, records: list[bytes]) -> Path:
    crc = [0] + [zlib.crc32(bytes([t])) for t in range(1, 5)]
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))

    def chunk(data: bytes, t: int) -> None:
        out.extend(struct.pack("<IHB", zlib.crc32(data, crc[t]) & 0xFFFFFFFF, len(data), t))
        out.extend(data)

    for s in records:
        left = BLOCK - len(out) % BLOCK
        if left < HDR:
            out.extend(b"\0" * left)
            left = BLOCK
        if len(s) + HDR <= left:
            chunk(s, 1)
            continue
        room = left - HDR
        chunk(s[:room], 2)
        used = room
        while len(s) - used > BLOCK - HDR:
            chunk(s[used:used + BLOCK - HDR], 3)
            used += BLOCK - HDR
        chunk(s[used:], 4)
    Path(path).write_bytes(bytes(out))
    return Path(path)


def _records(b: bytes, check_crc: bool = True):
    """The records of a wandb log (LevelDB-style 32 KiB blocks, full/first/middle/last
    chunks), each CRC-checked, as wandb's protobufs decode them."""
    from wandb.proto import wandb_internal_pb2 as pb
    crc = [0] + [zlib.crc32(bytes([t])) for t in range(1, 5)]
    i, cur = HDR, b""
    while i + HDR <= len(b):
        if BLOCK - i % BLOCK < HDR:
            i += BLOCK - i % BLOCK
            continue
        c, n, t = struct.unpack_from("<IHB", b, i)
        d = b[i + HDR:i + HDR + n]
        if check_crc:
            assert zlib.crc32(d, crc[t]) & 0xFFFFFFFF == c
        elif len(d) < n or zlib.crc32(d, crc[t]) & 0xFFFFFFFF != c:
            return                      # a record still being written
        i += HDR + n
        if t == 2:
            cur = d
            continue
        if t == 3:
            cur += d
            continue
        yield pb.Record.FromString(d if t == 1 else cur + d)


def reference_rows(path: Path) -> list[dict]:
    """History rows (key -> value) of a real wandb file, decoded with wandb's own
    generated protobuf classes (the test skips when wandb is not installed)."""
    rows = []
    for rec in _records(Path(path).read_bytes()):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for it in rec.history.item:
                row[it.key or ".".join(it.nested_key)] = json.loads(it.value_json)
            rows.append(row)
    return rows


def wait_written(path: Path, timeout: float = 120.0) -> Path:
    """Wait until wandb's service has written the whole run: `run.finish()` can return while
    wandb-core is still appending records (seen under load: a reader then sees part of the
    history). Complete means the `exit` record is there and the size has stopped changing."""
    end = time.monotonic() + timeout
    size = -1
    while time.monotonic() < end:
        b = Path(path).read_bytes()
        if len(b) == size and any(r.WhichOneof("record_type") == "exit" for r in _records(b, check_crc=False)):
            return Path(path)
        size = len(b)
        time.sleep(0.5)
    raise AssertionError(f"wandb did not finish writing {path} in {timeout} s")
