"""Weights & Biases local runs: the ``run-<id>.wandb`` record log, ``files/config.yaml``
and ``files/wandb-summary.json`` of ``wandb/run-*/`` and ``wandb/offline-run-*/``.

The record log is what ``wandb`` writes locally for every run, online or offline (an
offline run that was never synced has nothing else: no ``config.yaml``, no summary, no
``output.log``; wandb 0.31 writes only ``files/requirements.txt`` beside it).  Its format
(wandb's ``sdk/internal/datastore.py``, which follows LevelDB's log format)::

    header  := ":W&B" | uint16 0xBEE1 | uint8 version 0              (7 bytes, once)
    block   := chunk* trailer?        (32 KiB blocks from the start of the file,
                                       the header counting in the first)
    chunk   := uint32 crc | uint16 length | uint8 type | data[length]
    trailer := fewer than 7 zero bytes (no chunk header fits)

``type`` is FULL (1), or FIRST (2), MIDDLE (3), LAST (4) for a record split across
blocks; ``crc`` is ``zlib.crc32(data, crc32(bytes([type])))``.  Each record is a
serialized ``wandb_internal.Record`` protobuf (``wandb/proto/wandb_internal.proto``):
``num`` = 1, ``history`` = 2 (``HistoryRecord``: repeated ``item`` = 1 {``key`` = 1,
``nested_key`` = 2 (repeated), ``value_json`` = 16}, ``step`` = 2 {``num`` = 1}),
``summary`` = 3, ``output`` = 4, ``config`` = 5, ``metric`` = 12 (``define_metric``:
``name`` = 1, ``glob_name`` = 2, ``step_metric`` = 4, ``options`` = 6 {``step_sync`` = 1}),
``output_raw`` = 13, ``run`` = 17 (its ``config`` = 4), ``exit`` = 18.

Reading, in the manner of :mod:`lorascope.ingest.tfevents`:

* blocks are independent (a chunk never crosses a block boundary), so the chunk
  headers of all blocks are walked at once with numpy, one chunk per block per pass;
  a damaged block is skipped to the next one (LevelDB's recovery), a file cut short ends
  at its last complete record, both reported;
* history records are decoded by a numpy **fast path** that recognises the layout
  wandb writes (an item = one key + ``value_json``), every record's items in lockstep;
  anything else (other record types, nested keys, typed values, long varints, records
  split across blocks) goes through a small protobuf wire decoder
  (:mod:`lorascope.ingest._pbwire`).  Tests check both paths agree, and agree with
  wandb's own ``wandb_internal_pb2`` where wandb is installed;
* the CRC of every record that is decoded is checked; records nothing is read from
  (summaries, system stats, telemetry) are skipped unread.

Steps: every history row has wandb's own counter ``_step`` (one per ``wandb.log``
call).  A key whose ``define_metric`` names a ``step_metric`` is plotted against that
metric instead: HF Trainer's ``WandbCallback`` logs ``{... , "train/global_step":
state.global_step}`` without ``step=`` and defines ``train/global_step`` as the step of
``*`` (``step_sync``: a row without it takes the last value), so an evaluation row and
a training row of the same optimizer step have different ``_step``s but one
``train/global_step``.  Without any ``define_metric`` (older writers), a row key named
``train/global_step``, ``trainer/global_step`` or ``global_step`` is taken as the step.
"""
from __future__ import annotations

import fnmatch
import math
import mmap
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from lorascope.ingest import _pbwire as W
from lorascope.ingest import _tracker
from lorascope.model import LogEvent, Parsed, RawSeries, Source
from lorascope.safe_open import open_file

KIND = "wandb"
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
HEADER = 7
BLOCK = 32768
CHUNK = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MAX_RECORD = 64 << 20          # a record assembled from chunks longer than this is corruption
MAX_ITEMS = 1 << 16            # items of one history row read by the fast path
MAX_VALUE = 40                 # bytes of a value_json the fast path parses as a number
MAX_CONSOLE_LINES = 200_000    # console lines of a run handed to the text-log parser
STEP_KEYS = ("train/global_step", "trainer/global_step", "global_step")
_CRC_SEED = [0] + [zlib.crc32(bytes([t])) for t in range(1, 5)]
_HDR = struct.Struct("<4sHB")
_NUMERIC_START = frozenset(b"-0123456789NI")
_NUMERIC_LUT = np.zeros(256, bool)
_NUMERIC_LUT[list(_NUMERIC_START)] = True
_C1, _C2, _C3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), 0x165667B19E3779F9
# the low k bytes of a uint64, k = 0..8
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], np.uint64)


# ------------------------------------------------------------------------ the file
class _Views:
    def __init__(self, buf) -> None:
        n = len(buf)
        self.u8 = np.frombuffer(buf, np.uint8)
        self.u16 = np.ndarray((max(n - 1, 0),), "<u2", buf, 0, (1,))
        self.u32 = np.ndarray((max(n - 3, 0),), "<u4", buf, 0, (1,))
        self.u64 = np.ndarray((max(n - 7, 0),), "<u8", buf, 0, (1,))


class _State:
    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.problems: list[str] = []
        self.bad_crc = 0
        self.undecodable = 0
        self.records = 0
        self.nrec = 0                       # record indices handed out
        # per key: list of (record index array, value array)
        self.cols: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.config: dict = {}
        self.metrics: list[tuple[str, str, str, bool]] = []   # (name, glob, step_metric, sync)
        self.console: list[tuple[int, str]] = []              # (stream, text) in order
        self.run: dict = {}
        self.exit_code: int | None = None
        self.slow: dict[str, tuple[list[int], list[float]]] = {}   # wire-decoded rows

    def col(self, key: str, recs: np.ndarray, vals: np.ndarray) -> None:
        if len(recs):
            self.cols.setdefault(key, []).append((recs, vals))

    def point(self, key: str, rec: int, value: float) -> None:
        r, v = self.slow.get(key) or self.slow.setdefault(key, ([], []))
        r.append(rec)
        v.append(value)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(list(self.cols) + list(self.slow)))


def parse(path: Path, rel: str, *, fast_path: bool = True) -> Parsed:
    """Read one ``run-*.wandb`` record log into one RawSeries per logged scalar key.

    Never raises on bad content: problems go to ``Parsed.source.problems``.
    ``fast_path=False`` decodes every record with the wire decoder (reference, slow)."""
    src = Source(path=rel, kind=KIND)
    st = _State(rel)
    try:
        f = open_file(path)
    except OSError as e:
        src.problems.append(f"cannot open: {e.strerror or e}")
        return Parsed(source=src)
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                src.problems.append("empty file")
                return Parsed(source=src)
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                mm = f.read()
            try:
                _read(mm, size, st, fast_path)
            finally:
                if isinstance(mm, mmap.mmap):
                    try:
                        mm.close()
                    except BufferError:
                        pass
        except OSError as e:
            st.problems.append(f"read error: {e.strerror or e}")
    parsed = _finish(st, Path(path), rel)
    src.problems.extend(st.problems)
    if st.bad_crc:
        src.problems.append(f"{st.bad_crc} records failed their CRC check and were skipped")
    if st.undecodable:
        src.problems.append(f"{st.undecodable} records could not be decoded")
    src.records = st.records
    parsed.source = src
    return parsed


def _read(buf, size: int, st: _State, fast_path: bool) -> None:
    if size < HEADER:
        st.problems.append("not a W&B record log: shorter than its 7-byte header")
        return
    ident, magic, version = _HDR.unpack_from(buf, 0)
    if ident != IDENT or magic != MAGIC:
        st.problems.append("not a W&B record log: no ':W&B' header")
        return
    if version != VERSION:
        st.problems.append(f"W&B record log version {version}, only version {VERSION} is known")
        return
    v = _Views(buf)
    starts, lens, types = _walk(v, size, st)
    _records(buf, v, starts, lens, types, st, fast_path)


def _walk(v: _Views, size: int, st: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every chunk of every block, in file order: data start, length, type."""
    nb = (size + BLOCK - 1) // BLOCK
    bstart = np.arange(nb, dtype=np.int64) * BLOCK
    bend = np.minimum(bstart + BLOCK, size)
    pos = bstart.copy()
    pos[0] = HEADER
    active = np.ones(nb, bool)
    s_all, n_all, t_all = [], [], []
    corrupt: list[int] = []
    truncated = False
    while True:
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        p = pos[idx]
        room = bend[idx] - p
        short = room < CHUNK
        if short.any():
            # fewer than 7 bytes left: the block's zero trailer, or a file cut mid-header
            for i in np.flatnonzero(short).tolist():
                b, q = int(idx[i]), int(p[i])
                if room[i] > 0 and bend[b] == size and np.any(v.u8[q:size]):
                    truncated = True
            active[idx[short]] = False
            idx, p = idx[~short], p[~short]
            if not len(idx):
                continue
        ln = v.u16[p + 4].astype(np.int64)
        ty = v.u8[p + 6]
        zero = (ty == 0) & (ln == 0) & (v.u32[p] == 0)
        bad = ((ty < FULL) | (ty > LAST)) & ~zero
        over = (p + CHUNK + ln > bend[idx]) & ~bad & ~zero
        ok = ~(zero | bad | over)
        if ok.any():
            s_all.append(p[ok] + CHUNK)
            n_all.append(ln[ok])
            t_all.append(ty[ok])
            pos[idx[ok]] = p[ok] + CHUNK + ln[ok]
        stop = ~ok
        if stop.any():
            for i in np.flatnonzero(zero).tolist():
                b, q = int(idx[i]), int(p[i])
                if np.any(v.u8[q:int(bend[b])]):      # zeros, then data: not a trailer
                    corrupt.append(q)
            for i in np.flatnonzero(stop & (bad | over)).tolist():
                b = int(idx[i])
                if bend[b] == size and over[i] and bstart[b] + BLOCK > size:
                    truncated = True          # the last, unfinished block
                else:
                    corrupt.append(int(p[i]))
            active[idx[stop]] = False
    if corrupt:
        st.problems.append(f"{len(corrupt)} damaged blocks skipped (first at byte offset {corrupt[0]})")
    if truncated:
        st.problems.append("truncated final record (the writer stopped mid-record)")
    if not s_all:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    s = np.concatenate(s_all)
    order = np.argsort(s, kind="stable")
    return s[order], np.concatenate(n_all)[order], np.concatenate(t_all)[order]


def _crc_ok(buf, s: int, n: int, t: int, v: _Views) -> bool:
    stored = int(v.u32[s - CHUNK])
    return (zlib.crc32(buf[s:s + n], _CRC_SEED[t]) & 0xFFFFFFFF) == stored


def _records(buf, v: _Views, starts, lens, types, st: _State, fast_path: bool) -> None:
    """Split chunks into records, classify them, decode what is read."""
    if not len(starts):
        return
    full = types == FULL
    # record index = order of the record's first chunk in the file
    first_chunk = full | (types == FIRST)
    rec_of_chunk = np.cumsum(first_chunk) - 1
    st.nrec = int(first_chunk.sum())
    st.records = st.nrec
    fi = np.flatnonzero(full)
    _decode(buf, v, starts[fi], lens[fi], rec_of_chunk[fi], st, fast_path, True)
    # records split across blocks: joined (each chunk's CRC checked), then decoded the
    # same way from a buffer of their own
    multi = np.flatnonzero(~full)
    if len(multi):
        datas, recs = _multi(buf, v, starts, lens, types, rec_of_chunk, multi, st)
        if datas:
            side = b"".join(datas)
            n = np.asarray([len(d) for d in datas], np.int64)
            o = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
            _decode(side, _Views(side), o, n, np.asarray(recs, np.int64), st, fast_path, False)


def _decode(buf, v: _Views, o, n, rec, st: _State, fast_path: bool, crc_check: bool) -> None:
    """Records at o (length n) in buf: history rows by the fast path, the rest by the
    wire decoder; `crc_check`: the chunk header before each record holds its CRC."""
    # skip an optional `num` varint (field 1), then the payload's tag byte
    u8 = v.u8
    lim = len(u8) - 1
    q = o.copy()
    has_num = (n > 0) & (u8[np.minimum(o, lim)] == 0x08)
    q[has_num] += 1
    done = ~has_num
    for _ in range(10):
        if done.all():
            break
        b = u8[np.minimum(q, lim)]
        q = np.where(done, q, q + 1)
        done |= b < 0x80
    tag = np.where(q < o + n, u8[np.minimum(q, lim)], 0)
    empty = n == 0
    hist = (tag == 0x12) & ~empty
    skip = ((tag == 0x1A) | (tag == 0x3A) | (tag == 0x5A) | (tag == 0x32)) & ~empty   # summary, stats, telemetry, files
    slow = ~(hist | skip | empty)
    if fast_path and hist.any():
        hi = np.flatnonzero(hist)
        bad = _fast_history(buf, v, o[hi], n[hi], q[hi], rec[hi], st, crc_check)
        if len(bad):
            slow[hi[bad]] = True
    elif hist.any():
        slow |= hist
    for i in np.flatnonzero(slow).tolist():
        s, ln = int(o[i]), int(n[i])
        if crc_check and not _crc_ok(buf, s, ln, FULL, v):
            st.bad_crc += 1
            continue
        _slow_record(bytes(buf[s:s + ln]), int(rec[i]), st)


def _multi(buf, v, starts, lens, types, rec_of_chunk, multi, st: _State) -> tuple[list[bytes], list[int]]:
    """The records split into FIRST, MIDDLE..., LAST chunks, joined."""
    datas: list[bytes] = []
    recs: list[int] = []
    parts: list[bytes] = []
    size = 0
    prev = -2
    broken = 0
    for i in multi.tolist():
        t = int(types[i])
        s, n = int(starts[i]), int(lens[i])
        if t == FIRST:
            if parts:
                broken += 1
            parts, size = [], 0
        elif not parts or i != prev + 1:
            broken += 1 if t in (MIDDLE, LAST) else 0
            parts, size, prev = [], 0, i
            continue
        if not _crc_ok(buf, s, n, t, v):
            st.bad_crc += 1
            parts, size, prev = [], 0, i
            continue
        parts.append(bytes(buf[s:s + n]))
        size += n
        prev = i
        if size > MAX_RECORD:
            broken += 1
            parts, size = [], 0
            continue
        if t == LAST:
            datas.append(b"".join(parts))
            recs.append(int(rec_of_chunk[i]))
            parts, size = [], 0
    if parts:
        broken += 1
    if broken:
        st.problems.append(f"{broken} records split across blocks were incomplete")
    return datas, recs


# ------------------------------------------------------------ history fast path
def _varint_vec(u8: np.ndarray, p: np.ndarray, lim: int, maxlen: int = 3):
    """Varints of at most `maxlen` bytes at p: (value, length, ok)."""
    b = u8[np.minimum(p, lim)].astype(np.int64)
    done = b < 0x80
    val = b & 0x7F
    ln = np.ones(len(p), np.int64)
    for k in range(1, maxlen):
        if done.all():
            break
        b = u8[np.minimum(p + k, lim)].astype(np.int64)
        take = ~done
        val = np.where(take, val | ((b & 0x7F) << (7 * k)), val)
        ln = np.where(take, k + 1, ln)
        done |= b < 0x80
    return val, ln, done


def _fast_history(buf, v: _Views, o, n, q, rec, st: _State, crc_check: bool = True) -> np.ndarray:
    """Decode history records laid out as wandb writes them, all at once.

    Returns the indices (into o) of records the fast path could not read; those go to
    the wire decoder."""
    u8 = v.u8
    lim = len(u8) - 1
    end = o + n
    L, vl, ok = _varint_vec(u8, q + 1, lim)
    hs = q + 1 + vl
    he = hs + L
    ok &= he <= end
    # CRC of every record read here (zlib per record: C speed)
    crc_bad = np.zeros(len(o), bool)
    sel = np.flatnonzero(ok)
    if crc_check and len(sel):
        mv, crc32, seed = memoryview(buf), zlib.crc32, _CRC_SEED[FULL]
        got = np.fromiter((crc32(mv[a:b], seed) for a, b in zip(o[sel].tolist(), end[sel].tolist())),
                          np.uint32, count=len(sel))
        crc_bad[sel] = got != v.u32[o[sel] - CHUNK]
    if crc_bad.any():
        st.bad_crc += int(crc_bad.sum())
        ok &= ~crc_bad
    failed = ~ok & ~crc_bad
    cur = hs.copy()
    items: list[tuple[np.ndarray, ...]] = []     # per pass: (index into o, ks, klen, vs, vlen)
    live = ok.copy()
    for _ in range(MAX_ITEMS):
        idx = np.flatnonzero(live & (cur < he))
        if not len(idx):
            break
        c = cur[idx]
        tag = u8[c]
        L2, l2, good = _varint_vec(u8, c + 1, lim)
        s = c + 1 + l2
        e = s + L2
        good &= (e <= he[idx]) & ((tag == 0x0A) | (tag == 0x12))
        is_item = good & (tag == 0x0A)
        # item: (0x0a | 0x12) klen key 0x82 0x01 vlen value, ending at e
        ktag = u8[np.minimum(s, lim)]
        klen = u8[np.minimum(s + 1, lim)].astype(np.int64)
        ks = s + 2
        ke = ks + klen
        vt0 = u8[np.minimum(ke, lim)]
        vt1 = u8[np.minimum(ke + 1, lim)]
        vlen = u8[np.minimum(ke + 2, lim)].astype(np.int64)
        vs = ke + 3
        shape = ((ktag == 0x0A) | (ktag == 0x12)) & (klen < 0x80) & (klen > 0) & (vt0 == 0x82) \
            & (vt1 == 0x01) & (vlen < 0x80) & (vs + vlen == e)
        bad_item = is_item & ~shape
        good &= ~bad_item
        take = is_item & shape
        if take.any():
            items.append((idx[take], ks[take], klen[take], vs[take], vlen[take]))
        failed[idx[~good]] = True
        live[idx[~good]] = False
        cur[idx[good]] = e[good]
    else:
        failed |= live & (cur < he)
    # a record that had nested / typed items is read whole by the wire decoder
    keep_rec = ~failed & ok
    for r, ks, kl, vs, vl2 in items:      # one pass: mostly one key in every row
        sel = keep_rec[r]
        if not sel.all():
            r, ks, kl, vs, vl2 = r[sel], ks[sel], kl[sel], vs[sel], vl2[sel]
        if len(r):
            _collect(buf, v, r, rec, ks, kl, vs, vl2, st)
    return np.flatnonzero(failed)


def _collect(buf, v: _Views, r, rec, ks, kl, vs, vl, st: _State) -> None:
    """Group items by key and parse their numbers.  A 64-bit signature of each key (its
    first and last 8 bytes, length and, for long keys, the words between) finds the
    groups; every member of a group is then compared with the group's first key byte
    for byte (words), so a signature collision only splits work, never merges keys."""
    u8, u64 = v.u8, v.u64
    lim8 = len(u64) - 1
    w0 = u64[np.minimum(ks, lim8)] & _LOW_BYTES[np.minimum(kl, 8)]
    wl = u64[np.minimum(np.maximum(ks + kl - 8, ks), lim8)]
    sig = w0 ^ (wl * _C1) ^ (kl.astype(np.uint64) * _C2)
    top = int(kl.max())
    mids = []
    for off in range(8, top - 8, 8):
        m = np.where(kl > off + 8, u64[np.minimum(ks + off, lim8)], np.uint64(0))
        mids.append(m)
        sig ^= m * np.uint64(_C3 + off)
    todo = np.ones(len(r), bool)
    first = True
    while todo.any():
        r0 = int(np.argmax(todo))
        if first and (sig == sig[0]).all():
            sel = None                               # one key at this item position in every row
        else:
            sel = np.flatnonzero(todo & (sig == sig[r0]))
        first = False
        idx = slice(None) if sel is None else sel
        exact = (kl[idx] == kl[r0]) & (w0[idx] == w0[r0]) & (wl[idx] == wl[r0])
        for m in mids:
            exact &= m[idx] == m[r0]
        if not exact.all():                          # a signature collision: split the group
            sel = (np.arange(len(r)) if sel is None else sel)[exact]
            idx = sel
        k0, s0 = int(kl[r0]), int(ks[r0])
        key = bytes(u8[s0:s0 + k0]).decode("utf-8", errors="replace")
        if sel is None:
            todo[:] = False
            recs, texts = _number_texts(u8, rec[r], vs, vl)
        else:
            todo[sel] = False
            recs, texts = _number_texts(u8, rec[r[sel]], vs[sel], vl[sel])
        st.col(key, recs, texts)


def _number_texts(u8: np.ndarray, recs: np.ndarray, vs: np.ndarray, vl: np.ndarray):
    """The value_json texts that are JSON numbers (NaN, Infinity too), as an ``S`` array
    parsed only if the key is used (see :func:`_parse_numbers`)."""
    lim = len(u8) - 1
    first = u8[np.minimum(vs, lim)]
    num = _NUMERIC_LUT[first] & (vl > 0) & (vl <= MAX_VALUE)
    if not num.all():
        recs, vs, vl = recs[num], vs[num], vl[num]
    if not len(vs):
        return recs, np.empty(0, "S8")
    return recs, _gather_text(u8, vs, vl)


def _parse_numbers(recs: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if texts.dtype.kind != "S":
        return recs, texts
    try:
        return recs, texts.astype(np.float64)
    except (ValueError, OverflowError):
        out = np.empty(len(texts))
        ok = np.ones(len(texts), bool)
        for i, t in enumerate(texts.tolist()):
            f = _float(t)
            if f is None:
                ok[i] = False
            else:
                out[i] = f
        return recs[ok], out[ok]


def _gather_text(u8: np.ndarray, vs: np.ndarray, vl: np.ndarray) -> np.ndarray:
    """Byte strings u8[vs:vs+vl] as a fixed-width ``S`` array, gathered 8 bytes at a time."""
    nw = (int(vl.max()) + 7) // 8
    buf = u8.base if u8.base is not None else u8
    u64 = np.ndarray((max(len(u8) - 7, 0),), "<u8", buf, 0, (1,)) if len(u8) >= 8 else None
    words = np.zeros((len(vs), nw), np.uint64)
    for j in range(nw):
        left = vl - 8 * j
        if u64 is not None:
            w = u64[np.minimum(vs + 8 * j, len(u64) - 1)]
            near_end = vs + 8 * j + 8 > len(u8)
        else:
            w = np.zeros(len(vs), np.uint64)
            near_end = np.ones(len(vs), bool)
        if near_end.any():               # the last bytes of the buffer: byte by byte
            for i in np.flatnonzero(near_end & (left > 0)).tolist():
                a = int(vs[i]) + 8 * j
                chunk = bytes(u8[a:min(a + 8, len(u8))])
                w[i] = int.from_bytes(chunk.ljust(8, b"\0"), "little")
        shift = np.clip(left, 0, 8).astype(np.uint64) * np.uint64(8)
        mask = np.where(left >= 8, np.uint64(0xFFFFFFFFFFFFFFFF),
                        (np.uint64(1) << shift) - np.uint64(1))
        words[:, j] = w & mask
    return words.view(f"S{8 * nw}").ravel()


def _float(t: bytes | str) -> float | None:
    try:
        f = float(t)
    except (ValueError, OverflowError, TypeError):
        return None
    return f


# ------------------------------------------------------------- the wire decoder
def _slow_record(data: bytes, rec: int, st: _State) -> None:
    try:
        fs = W.fields(data)
    except W.WireError:
        st.undecodable += 1
        return
    try:
        for num, wt, val in fs:
            if wt != W.LEN:
                continue
            if num == 2:
                _history(val, rec, st)
            elif num == 5:
                _config_record(val, st)
            elif num == 12:
                _metric(val, st)
            elif num in (4, 13):
                _output(val, st)
            elif num == 17:
                _run(val, st)
            elif num == 18:
                ex = W.fields(val)
                code = W.first(ex, 1, 0)
                st.exit_code = W.signed(code) if isinstance(code, int) else 0
    except W.WireError:
        st.undecodable += 1


def item_value(fs: list):
    """A HistoryItem's value: value_json, else the typed fields newer writers use."""
    vj = W.first(fs, 16)
    if vj is not None:
        return _tracker.json_value(vj)
    for num, wt, val in fs:
        if num == 6 and wt == W.FIXED64:
            return W.double(val)
        if num == 5 and wt == W.VARINT:
            return W.zigzag(val)
        if num == 4 and wt == W.VARINT:
            return bool(val)
    return None


def item_key(fs: list) -> str | None:
    k = W.text(W.first(fs, 1))
    if k:
        return k
    parts = [W.text(x) or "" for x in W.all_of(fs, 2)]
    return ".".join(parts) if parts else None


def _history(data: bytes, rec: int, st: _State) -> None:
    row: dict[str, float] = {}
    step = None
    for num, wt, val in W.fields(data):
        if num == 1 and wt == W.LEN:
            fs = W.fields(val)
            key = item_key(fs)
            x = item_value(fs)
            if key is None or isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            try:
                row[key] = float(x)
            except OverflowError:
                continue
        elif num == 2 and wt == W.LEN:
            step = W.first(W.fields(val), 1, 0)
    if "_step" not in row and isinstance(step, int):
        row["_step"] = float(W.signed(step))
    for k, x in row.items():
        st.point(k, rec, x)


def _set_path(doc: dict, path: list[str], value) -> None:
    node = doc
    for p in path[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[path[-1]] = value


def _config_record(data: bytes, st: _State) -> None:
    for num, wt, val in W.fields(data):
        if wt != W.LEN or num not in (1, 2):
            continue
        fs = W.fields(val)
        k = W.text(W.first(fs, 1))
        path = [k] if k else [W.text(x) or "" for x in W.all_of(fs, 2)]
        if not path or not path[0] or len(path) > 32:
            continue
        if num == 1:
            _set_path(st.config, path, _tracker.json_value(W.first(fs, 16)))
        else:
            node = st.config
            for p in path[:-1]:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)


def _metric(data: bytes, st: _State) -> None:
    fs = W.fields(data)
    opts = W.first(fs, 6)
    sync = False
    if isinstance(opts, bytes):
        sync = bool(W.first(W.fields(opts), 1, 0))
    st.metrics.append((W.text(W.first(fs, 1)) or "", W.text(W.first(fs, 2)) or "",
                       W.text(W.first(fs, 4)) or "", sync))


def _output(data: bytes, st: _State) -> None:
    fs = W.fields(data)
    line = W.text(W.first(fs, 3))
    if line and len(st.console) < MAX_CONSOLE_LINES:
        st.console.append((W.first(fs, 1, 0), line))


def _run(data: bytes, st: _State) -> None:
    fs = W.fields(data)
    cfg = W.first(fs, 4)
    if isinstance(cfg, bytes):
        _config_record(cfg, st)
    for num, name in ((1, "run_id"), (3, "project"), (8, "display_name")):
        t = W.text(W.first(fs, num))
        if t:
            st.run[name] = t[:200]
    ts = W.first(fs, 17)
    if isinstance(ts, bytes):
        secs = W.first(W.fields(ts), 1, 0)
        if isinstance(secs, int):
            st.run["start_time"] = W.signed(secs)
    ss = W.first(fs, 14)
    if isinstance(ss, int) and ss:
        st.run["starting_step"] = W.signed(ss)


# ------------------------------------------------------------------ the series
def _column(st: _State, key: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [_parse_numbers(r, t) for r, t in st.cols.get(key) or []]
    if key in st.slow:
        r, v = st.slow[key]
        parts.append((np.asarray(r, np.int64), np.asarray(v, np.float64)))
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    recs = np.concatenate([a for a, _ in parts]) if len(parts) > 1 else parts[0][0]
    vals = np.concatenate([b for _, b in parts]) if len(parts) > 1 else parts[0][1]
    if len(recs) > 1 and not (recs[1:] >= recs[:-1]).all():
        order = np.argsort(recs, kind="stable")
        recs, vals = recs[order], vals[order]
    return recs, vals


def _dense(st: _State, key: str, fill: bool) -> np.ndarray:
    """One value per record (NaN where the row lacks the key; with `fill`, the last
    value seen before it)."""
    out = np.full(st.nrec, np.nan)
    recs, vals = _column(st, key)
    if len(recs):
        out[recs] = vals
    if fill and len(recs):
        has = ~np.isnan(out)
        idx = np.where(has, np.arange(st.nrec), 0)
        np.maximum.accumulate(idx, out=idx)
        seen = np.maximum.accumulate(has)
        out = np.where(seen, out[idx], np.nan)
    return out


def _step_metric_of(key: str, metrics: list) -> tuple[str, bool] | None:
    for name, glob, sm, sync in metrics:
        if name == key and sm:
            return sm, sync
    for name, glob, sm, sync in metrics:
        if glob and sm and fnmatch.fnmatchcase(key, glob):
            return sm, sync
    return None


def _finish(st: _State, path: Path, rel: str) -> Parsed:
    parsed = Parsed(source=Source(rel, KIND))
    present = set(st.keys())
    keys = [k for k in st.keys() if not k.startswith("_")]
    step_metrics = {sm for _, _, sm, _ in st.metrics if sm}
    fallback = None
    if not step_metrics:
        fallback = next((k for k in STEP_KEYS if k in present), None)
        if fallback:
            step_metrics = {fallback}
    own: list[np.ndarray] = []          # wandb's own _step, read when a key needs it
    walls = _dense(st, "_timestamp", False) if "_timestamp" in present else None
    cache: dict[tuple[str, bool], np.ndarray] = {}
    dropped = 0
    for key in keys:
        if key in step_metrics:
            continue
        recs, vals = _column(st, key)
        sm = _step_metric_of(key, st.metrics) or ((fallback, True) if fallback else None)
        if sm is not None and sm[0] in present and sm[0] != key:
            if sm not in cache:
                cache[sm] = _dense(st, sm[0], sm[1])
            steps_f = cache[sm][recs]
        else:
            if not own:
                own.append(_dense(st, "_step", False) if "_step" in present
                           else np.full(st.nrec, np.nan))
            steps_f = own[0][recs]
        good = np.isfinite(steps_f) & (np.abs(steps_f) < 2.0 ** 62)
        if not good.all():
            dropped += int((~good).sum())
            recs, vals, steps_f = recs[good], vals[good], steps_f[good]
        if not len(recs):
            continue
        wt = walls[recs] if walls is not None else None
        parsed.series.append(RawSeries(tag=key, steps=steps_f.astype(np.int64), values=vals,
                                       source=rel, wall_times=wt,
                                       positions=recs.astype(np.float64)))
    if dropped:
        st.problems.append(f"{dropped} logged values had no step and were left out")
    facts = parsed.facts
    if st.config:
        doc = {k: v for k, v in st.config.items() if k != "_wandb"}
        values, f2 = _tracker.config_values(doc, path, rel)
        parsed.config = values
        facts.update(f2)
    if st.run.get("start_time"):
        facts["started_at"] = float(st.run["start_time"])
    if st.console and not (path.parent / "files" / "output.log").is_file():
        parsed.events = console_events(st.console, rel, parsed)
    if st.exit_code is not None:
        facts["exit_code"] = st.exit_code
    return parsed


def console_events(console: list[tuple[int, str]], rel: str, parsed: Parsed) -> list[LogEvent]:
    """What the run printed (stdout and stderr captured by wandb), read by the text-log
    parser for events (out of memory, tracebacks, base model not loaded, ...)."""
    from lorascope.ingest import textlog
    text = "".join(line for _, line in console)
    lines = re.split(r"\r?\n", text)[:MAX_CONSOLE_LINES]
    events, config, facts = textlog.read_lines(lines, rel)
    parsed.config.extend(c for c in config if c.key not in {x.key for x in parsed.config})
    for k in ("planned_steps", "train_views"):
        if k in facts:
            parsed.facts[k] = facts[k]
    return events


# ------------------------------------------------------- files/ of a synced run
MAX_YAML = 4 * 1024 * 1024


def parse_config_yaml(path: Path, rel: str) -> Parsed:
    """``files/config.yaml``: every key as ``{desc, value}`` (W&B's own format)."""
    from lorascope.ingest import config as cfgmod
    src = Source(path=rel, kind="wandb_config")
    parsed = Parsed(source=src)
    try:
        doc = cfgmod._read_document(Path(path), rel, src.problems)
        if not isinstance(doc, dict):
            return parsed
        values, facts = _tracker.config_values(_tracker.unwrap_wandb_yaml(doc), Path(path), rel)
        parsed.config = values
        parsed.facts.update(facts)
        src.records = len(values)
    except Exception as e:  # noqa: BLE001 - a parser never raises on content
        src.problems.append(f"config not understood: {type(e).__name__}: {str(e)[:200]}")
    return parsed


def parse_summary(path: Path, rel: str) -> Parsed:
    """``files/wandb-summary.json``: the last value of each key (read for its final step)."""
    from lorascope.ingest._lines import read_bounded
    src = Source(path=rel, kind="wandb_summary")
    parsed = Parsed(source=src)
    raw = read_bounded(Path(path), src.problems, 64 * 1024 * 1024)
    if raw is None:
        return parsed
    doc = _tracker.json_value(raw)
    if not isinstance(doc, dict):
        src.problems.append("not a JSON object")
        return parsed
    src.records = len(doc)
    finals = {k: float(v) for k, v in doc.items() if isinstance(k, str) and not isinstance(v, bool)
              and isinstance(v, (int, float)) and math.isfinite(float(v))}
    for k in STEP_KEYS:
        if k in finals and finals[k] == int(finals[k]) and 0 <= finals[k] < 2 ** 62:
            parsed.facts["final_step"] = int(finals[k])
            break
    return parsed
