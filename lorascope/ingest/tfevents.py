"""TensorBoard event files (``events.out.tfevents.*``) -> scalar curves.

The file is a sequence of TFRecord frames::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

and each ``data`` is a serialized ``tensorboard.compat.proto.event_pb2.Event``.

We read the framing ourselves, in chunks, with plain reads (a memory map would kill the
process with SIGBUS if the file shrank while read; reads are as fast here), and decode
each record in one of two ways.  Memory follows the scalars kept, not the file size: 24
bytes a point, columns that grow geometrically from 4 points (a tag seen once costs
about 200 bytes, not a preallocated block), and at most :data:`MAX_TAGS` tags a file
(one 4.5 MB record can name 300,000 tags; the rest are counted in a problem), plus up to
:data:`MAX_ROLE_TAGS` whose names the builder reads as a loss, learning rate or gradient
norm, so that a flood of other tags cannot push the loss curve out.  The
decoding:

* a **fast path** that recognises, with numpy over a whole chunk at once, the byte
  layout ``SummaryWriter.add_scalar`` (torch, tensorboardX, tensorboard) writes::

      Event{wall_time=1 (double), step=2 (varint, absent when 0),
            summary=5 {value=1 {tag=1 (string), simple_value=2 (float)}}}

  and nothing else: a record that differs anywhere (several values, metadata, tensors,
  tags of 119+ bytes, steps >= 2**42 or negative, unknown fields, non-UTF-8 tags) goes to
* the **protobuf path**: ``Event.FromString`` on that one record, which also reads TF2
  scalars (a ``tensor`` value whose tag's first ``metadata.plugin_data.plugin_name``
  is ``"scalars"``, dtype float or double).

Image summaries (``Summary.Image`` as ``SummaryWriter.add_image`` writes it, and TF2
``tensor`` values of the ``images`` plugin) take the protobuf path; their encoded bytes
are kept as :class:`~lorascope.model.EncodedImage` (decoded later, by
:mod:`lorascope.ingest.samples`), within a budget: at most ``MAX_IMAGE_BYTES`` per image
and ``IMAGE_BUDGET`` bytes / ``MAX_IMAGES`` images per file; past the budget every other
image kept so far is dropped, tag by tag, and later ones are kept at the doubled stride
(an evenly thinned timeline, with a problem saying so).

Both paths give the same points (tests check it on random events).  Series keep file
order; nothing is sorted or deduplicated here.

Framing is walked speculatively: scalar logs repeat a cycle of record lengths (one per
tag), so after a few records walked one by one we predict the next thousands of frame
starts and confirm them with one strided numpy comparison; the first mismatch resumes
the one-by-one walk.

CRC checks: the length CRC of every record is verified (vectorised with the CRC-32C
table tensorboard ships).  The data CRC is verified only with ``verify_data_crc=True``;
it is off by default because it makes a scalar-only parse about 3x slower.  A record
failing it is skipped and counted.
"""
from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

from lorascope.model import EncodedImage, Parsed, RawSeries, Source
from lorascope.safe_open import open_file

MAX_RECORD = 64 << 20          # bytes; a longer length field is treated as corruption
CHUNK = 1 << 20                # bytes read at a time
MAX_TAGS = 10_000              # scalar tags kept per file; values of further tags are dropped
MAX_ROLE_TAGS = 1_000          # and as many again whose names are a loss, lr or grad norm
BIG_RECORD = 64 * 1024         # a larger summary record is decoded value by value
_HEADER = 12                   # uint64 length + uint32 crc
_FRAME = 16                    # header + trailing data crc

MAX_IMAGE_BYTES = 16 << 20     # one encoded image larger than this is not kept
IMAGE_BUDGET = 128 << 20       # encoded image bytes kept per file
MAX_IMAGES = 4000              # images kept per file



def _crc32c_table() -> np.ndarray:
    """The CRC-32C (Castagnoli, reflected) table of TFRecord's checksums: tensorboard's
    own ``CRC_TABLE``, which costs 0.1-0.2 s of imports (its tensorflow stub and fsspec)."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1)
    return t


_CRC = _crc32c_table()
_Q = struct.Struct("<Q").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from
_I = struct.Struct("<I").unpack_from
_SCALAR_DTYPES = {types_pb2.DT_FLOAT: "<f4", types_pb2.DT_DOUBLE: "<f8"}
_LO7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_ONE = np.uint64(1)
_HI_BITS6 = np.uint64(0x808080808080)
_B0 = np.uint64(0xFF)
_S8, _S16, _S56 = np.uint64(8), np.uint64(16), np.uint64(56)


# --------------------------------------------------------------------------- CRC
def _masked_crc_rows(rows: np.ndarray) -> np.ndarray:
    """Masked CRC-32C of each row of a (n, k) uint8 matrix, vectorised over rows."""
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for j in range(rows.shape[1]):
        crc = _CRC[(crc ^ rows[:, j]) & 0xFF] ^ (crc >> np.uint32(8))
    crc ^= np.uint32(0xFFFFFFFF)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)


def _length_crcs(lens: np.ndarray) -> np.ndarray:
    """Masked CRC of each uint64 length, computed once per distinct length."""
    if not len(lens):
        return np.empty(0, np.uint32)
    top = int(lens.max())
    if top < 1 << 16:
        present = np.flatnonzero(np.bincount(lens, minlength=top + 1))
        lut = np.zeros(top + 1, np.uint32)
        lut[present] = _masked_crc_rows(present.astype("<u8").view(np.uint8).reshape(-1, 8))
        return lut[lens]
    return _masked_crc_rows(lens.astype("<u8").view(np.uint8).reshape(-1, 8))


class _Views:
    """Unaligned typed views of a buffer: ``u64[i]`` is the uint64 at byte i."""

    def __init__(self, buf: bytes) -> None:
        n = len(buf)
        self.u8 = np.frombuffer(buf, np.uint8)
        self.u32 = np.ndarray((max(n - 3, 0),), "<u4", buf, 0, (1,))
        self.u64 = np.ndarray((max(n - 7, 0),), "<u8", buf, 0, (1,))
        self.f32 = np.ndarray((max(n - 3, 0),), "<f4", buf, 0, (1,))
        self.f64 = np.ndarray((max(n - 7, 0),), "<f8", buf, 0, (1,))


# --------------------------------------------------------------------- accumulate
class _Acc:
    """Growable step/value/wall_time columns for one tag (compact numpy storage)."""

    __slots__ = ("n", "steps", "values", "walls")

    def __init__(self) -> None:
        self.n = 0
        self.steps = np.empty(4, np.int64)
        self.values = np.empty(4, np.float64)
        self.walls = np.empty(4, np.float64)

    def extend(self, steps, values, walls) -> None:
        k = len(steps)
        need = self.n + k
        if need > len(self.steps):
            have = len(self.steps)
            cap = max(need, 2 * have if have < 4096 else have + have // 4)
            # realloc (mremap for large blocks): no copy and no 2x peak while growing
            for arr in (self.steps, self.values, self.walls):
                arr.resize(cap, refcheck=False)
        self.steps[self.n:need] = steps
        self.values[self.n:need] = values
        self.walls[self.n:need] = walls
        self.n = need

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for arr in (self.steps, self.values, self.walls):
            arr.resize(self.n, refcheck=False)
        return self.steps, self.values, self.walls


class _State:
    def __init__(self, rel: str = "") -> None:
        self.rel = rel
        self.accs: dict[str, _Acc] = {}
        self.plugin: dict[str, str] = {}     # tag -> plugin_name of its first metadata
        self.undecodable = 0
        self.bad_data_crc = 0
        self.records = 0
        self.facts: dict = {}
        self.dropped: set[str] = set()       # tags past MAX_TAGS (their names, up to a bound)
        self.dropped_count = 0
        self.role_tags = 0                   # tags kept beyond MAX_TAGS for their role
        self.images: dict[str, list[EncodedImage]] = {}   # tag -> kept images, file order
        self.image_seen: dict[str, int] = {}              # tag -> images met
        self.image_stride = 1
        self.image_bytes = 0
        self.images_kept = 0
        self.images_too_large = 0
        self.images_full = False

    def add_image(self, tag: str, step: int, wall: float, data: bytes, rel: str) -> None:
        """Keep one encoded image within the budget (see the module doc)."""
        k = self.image_seen.get(tag, 0)
        self.image_seen[tag] = k + 1
        if len(data) > MAX_IMAGE_BYTES:
            self.images_too_large += 1
            return
        if self.images_full:
            return
        if k % self.image_stride:
            return
        self.images.setdefault(tag, []).append(EncodedImage(tag, int(step), float(wall), data, rel))
        self.image_bytes += len(data)
        self.images_kept += 1
        while self.image_bytes > IMAGE_BUDGET or self.images_kept > MAX_IMAGES:
            before = self.images_kept
            self.image_stride *= 2
            for t, lst in self.images.items():
                self.images[t] = lst[::2]
            kept = [im for lst in self.images.values() for im in lst]
            self.image_bytes = sum(len(im.data) for im in kept)
            self.images_kept = len(kept)
            if self.images_kept == before:
                # one image per tag (many tags): thinning frees nothing, keep no more
                lst = self.images[tag]
                if lst and lst[-1].step == int(step):
                    lst.pop()
                    self.image_bytes -= len(data)
                    self.images_kept -= 1
                self.images_full = True
                break

    def drop(self, tag: str) -> None:
        if tag not in self.dropped:
            self.dropped_count += 1
            if len(self.dropped) < MAX_TAGS:
                self.dropped.add(tag)

    def admit(self, tag: str, new_in_chunk: int = 0) -> bool:
        """May a tag not seen before get a column?  Within MAX_TAGS, yes; past it, only a
        tag the builder reads as a curve of the run (up to MAX_ROLE_TAGS of them)."""
        if len(self.accs) + new_in_chunk < MAX_TAGS:
            return True
        from lorascope.build import role_of         # the builder's tag -> role table
        if self.role_tags < MAX_ROLE_TAGS and role_of(tag) != "other":
            self.role_tags += 1
            return True
        self.drop(tag)
        return False

    def acc(self, tag: str) -> _Acc | None:
        a = self.accs.get(tag)
        if a is None:
            if len(self.accs) >= MAX_TAGS + self.role_tags and not self.admit(tag):
                return None
            a = self.accs[tag] = _Acc()
        return a


# ------------------------------------------------------------------------ parse
def parse(path: Path, rel: str, *, verify_data_crc: bool = False,
          fast_path: bool = True, chunk_size: int = CHUNK) -> Parsed:
    """Read one event file into one RawSeries per scalar tag, in file order.

    Never raises on bad content: problems go to ``Parsed.source.problems``.
    ``verify_data_crc`` also checks each record's data CRC (slower); ``fast_path=False``
    decodes every record with protobuf (reference behaviour, slow).
    """
    r = Reader(rel, verify_data_crc=verify_data_crc, fast_path=fast_path, chunk_size=chunk_size)
    r.read(path)
    return r.parsed(final=True, keep=False)


class Reader:
    """One event file read incrementally: each :meth:`read` goes on from the end of the
    last complete record read before, with the columns and counters of the reads before
    (``lorascope watch`` follows a file its trainer is still writing).  A record cut at
    the end of the file is left for the next read; :meth:`parsed` with ``final=True``
    calls it a truncated final record.  A bad length CRC or an absurd length ends the
    reading of the file for good (nothing after it can be framed)."""

    def __init__(self, rel: str, *, verify_data_crc: bool = False, fast_path: bool = True,
                 chunk_size: int = CHUNK) -> None:
        self.rel = rel
        self.st = _State(rel)
        self.src = Source(path=rel, kind="tfevents")
        self.offset = 0                 # end of the last complete record read
        self.pending = False            # bytes after `offset`: a record still being written
        self.broken: str | None = None  # why reading stopped for good
        self.size = 0
        self._opts = (bool(verify_data_crc), bool(fast_path), max(int(chunk_size), 64))

    def read(self, path: Path) -> bool:
        """Read what was appended since the last call; True when records were added."""
        if self.broken is not None:
            return False
        before = self.st.records
        try:
            f = open_file(path)
        except OSError as e:
            self.broken = f"cannot open: {e.strerror or e}"
            return False
        with f:
            try:
                size = os.fstat(f.fileno()).st_size
                self.size = size
                if size > self.offset:
                    win = _ReadWindows(f, size, self.offset)
                    self.offset, self.pending, self.broken = _read_windows(
                        win, size, self.st, *self._opts, base=self.offset)
                else:
                    self.pending = False
            except OSError as e:
                self.broken = f"read error: {e.strerror or e}"
        return self.st.records > before

    def parsed(self, final: bool = True, keep: bool = True) -> Parsed:
        """What was read so far as a :class:`Parsed`.  ``final``: the file is complete
        (a record cut at its end is a problem); ``keep``: copy the columns, reading goes
        on (without it the columns are handed over and this reader is spent)."""
        st = self.st
        src = Source(path=self.rel, kind="tfevents")
        if self.size == 0 and self.broken is None:
            src.problems.append("empty file")
        if self.broken is not None:
            src.problems.append(self.broken)
        elif final and self.pending:
            src.problems.append("truncated final record")
        _problems(st, src)
        src.records = st.records
        series = []
        for tag, acc in st.accs.items():
            if keep:
                n = acc.n
                steps, values, walls = acc.steps[:n].copy(), acc.values[:n].copy(), acc.walls[:n].copy()
            else:
                steps, values, walls = acc.finish()
            series.append(RawSeries(tag=tag, steps=steps, values=values, source=self.rel,
                                    wall_times=walls))
        images = [im for lst in st.images.values() for im in lst]
        return Parsed(source=src, series=series, facts=dict(st.facts), images=images)


def _problems(st: _State, src: Source) -> None:
    if st.undecodable:
        src.problems.append(f"{st.undecodable} records could not be decoded")
    if st.bad_data_crc:
        src.problems.append(f"{st.bad_data_crc} records failed the data CRC check")
    if st.dropped_count:
        src.problems.append(f"more than {MAX_TAGS} scalar tags: {st.dropped_count}"
                            f"{'+' if len(st.dropped) >= MAX_TAGS else ''} further tags not read")
    if st.images_full:
        src.problems.append(f"images of more than {MAX_IMAGES} tags: those after the first "
                            f"{st.images_kept} were not kept")
    elif st.image_stride > 1:
        src.problems.append(f"{sum(st.image_seen.values())} images: more than the "
                            f"{IMAGE_BUDGET >> 20} MiB / {MAX_IMAGES} kept per file, every "
                            f"{st.image_stride}th of each tag kept")
    if st.images_too_large:
        src.problems.append(f"{st.images_too_large} images larger than {MAX_IMAGE_BYTES >> 20} MiB "
                            "were not read")


class _ReadWindows:
    """Windows of the file by plain reads: the bytes from ``base``, at least ``want`` of
    them unless the file ends first."""

    def __init__(self, f, size: int, start: int = 0) -> None:
        self.f, self.size = f, size
        self.buf, self.off, self.eof = b"", start, False
        if start:
            f.seek(start)

    def window(self, base: int, want: int) -> tuple[bytes, bool]:
        if base > self.off:
            self.buf = self.buf[base - self.off:]
            self.off = base
        while len(self.buf) < want and not self.eof:
            data = self.f.read(want - len(self.buf))
            if not data:
                self.eof = True
            self.buf += data
        return self.buf[:want], self.eof or self.off + len(self.buf) >= self.size

    def advance(self, base: int) -> None:
        pass

    def close(self) -> None:
        pass


def _read_windows(win, size: int, st: _State, verify_data_crc: bool, fast_path: bool,
                  chunk_size: int, base: int = 0) -> tuple[int, bool, str | None]:
    """Frames and decodes records from file offset ``base`` on.  Returns the offset
    after the last complete record, whether bytes of a further (cut) record follow it,
    and why reading must stop for good (a bad length CRC, an absurd length), or None."""
    want = chunk_size   # window length wanted; more when one record needs it
    while True:
        buf, eof = win.window(base, want)
        want = chunk_size
        v = _Views(buf)
        starts, lens, pos = _walk(buf, v)
        stop = None
        if len(starts):
            bad = np.flatnonzero(v.u32[starts + 8] != _length_crcs(lens))
            if len(bad):
                k = int(bad[0])
                stop = f"bad length CRC at byte offset {base + int(starts[k])}"
                starts, lens = starts[:k], lens[:k]
            if len(starts):
                _decode_chunk(v, buf, starts, lens, st, verify_data_crc, fast_path)
        del v
        if stop is None:
            # why did the walk stop at `pos`?
            left = len(buf) - pos
            if left >= _HEADER:
                (n,) = _Q(buf, pos)
                crc = _masked_crc_rows(np.frombuffer(buf, np.uint8, 8, pos)[None, :])[0]
                if crc != _I(buf, pos + 8)[0]:
                    stop = f"bad length CRC at byte offset {base + pos}"
                elif n > MAX_RECORD:
                    stop = f"absurd record length {n} at byte offset {base + pos}"
                elif eof or base + pos + _FRAME + n > size:
                    return base + pos, True, None
                else:        # bounded by MAX_RECORD and by the file size
                    want = max(chunk_size, _FRAME + n)
            elif eof and left:
                return base + pos, True, None
        if stop is not None:
            return base + pos, False, stop
        if eof and pos >= len(buf):
            return base + pos, False, None
        base += pos
        win.advance(base)


def _walk(buf: bytes, v: _Views) -> tuple[np.ndarray, np.ndarray, int]:
    """Starts and lengths of the complete frames in buf, and the offset where it stopped.

    Lengths are not checked here (the caller checks their CRCs).
    """
    blen = len(buf)
    pieces_s: list[np.ndarray] = []
    pieces_n: list[np.ndarray] = []
    s_small: list[int] = []      # walked one by one, not yet flushed to pieces
    n_small: list[int] = []
    hist: list[int] = []         # lengths walked one by one since the last prediction
    pos = 0
    budget = 16                  # records walked one by one before trying to predict
    while True:
        k = 0
        while k < budget and pos + _HEADER <= blen:
            n = _Q(buf, pos)[0]
            end = pos + n + _FRAME
            if end > blen:
                break
            s_small.append(pos)
            n_small.append(n)
            hist.append(n)
            pos = end
            k += 1
        if k < budget:
            break
        period = 0
        for p in range(1, 9):
            if len(hist) >= 2 * p and hist[-p:] == hist[-2 * p:-p]:
                period = p
                break
        if not period:
            budget = min(budget * 2, 4096)
            del hist[:-16]
            continue
        cyc = hist[-period:]
        offs = [0] * period
        for j in range(1, period):
            offs[j] = offs[j - 1] + cyc[j - 1] + _FRAME
        clen = offs[-1] + cyc[-1] + _FRAME
        # the first record (in file order) whose length differs from the prediction
        first_bad = None
        for j in range(period):
            s0 = pos + offs[j]
            cnt = (blen - 8 - s0) // clen + 1 if s0 + 8 <= blen else 0
            bad = 0
            if cnt > 0:
                col = np.ndarray((cnt,), "<u8", buf, s0, (clen,))
                miss = np.flatnonzero(col != cyc[j])
                bad = int(miss[0]) if len(miss) else cnt
            r = bad * period + j
            first_bad = r if first_bad is None else min(first_bad, r)
        idx = np.arange(first_bad, dtype=np.int64)
        phase = idx % period
        starts = pos + (idx // period) * clen + np.asarray(offs, np.int64)[phase]
        lens = np.asarray(cyc, np.int64)[phase]
        ok = int(np.searchsorted(starts + lens + _FRAME, blen, side="right"))
        if ok:
            if s_small:
                pieces_s.append(np.asarray(s_small, np.int64))
                pieces_n.append(np.asarray(n_small, np.int64))
                s_small, n_small = [], []
            pieces_s.append(starts[:ok])
            pieces_n.append(lens[:ok])
            pos = int(starts[ok - 1] + lens[ok - 1] + _FRAME)
            hist = []
        budget = 16 if ok >= 256 else min(budget * 2, 4096)
    if s_small:
        pieces_s.append(np.asarray(s_small, np.int64))
        pieces_n.append(np.asarray(n_small, np.int64))
    if not pieces_s:
        return np.empty(0, np.int64), np.empty(0, np.int64), pos
    if len(pieces_s) == 1:
        return pieces_s[0], pieces_n[0], pos
    return np.concatenate(pieces_s), np.concatenate(pieces_n), pos


# ----------------------------------------------------------------------- decode
def _decode_chunk(v: _Views, buf: bytes, starts: np.ndarray, lens: np.ndarray,
                  st: _State, verify_data_crc: bool, fast_path: bool) -> None:
    first_record = st.records == 0
    st.records += len(starts)
    o = starts + _HEADER
    if verify_data_crc:
        ok = _data_crc_ok(v, o, lens)
        if not ok.all():
            st.bad_data_crc += int((~ok).sum())
            first_record = first_record and bool(ok[0])
            o, lens = o[ok], lens[ok]
    if fast_path and len(o):
        fast, tag_ids, tags, steps, values, walls = _fast(v, o, lens)
    else:
        fast = np.zeros(len(o), bool)
        tag_ids, tags = np.empty(0, np.int64), []
        steps, values, walls = np.empty(0, np.int64), np.empty(0), np.empty(0)
    if first_record and len(o) and fast[0]:
        st.facts["tfevents_start_wall_time"] = float(walls[0])
    slow = np.flatnonzero(~fast)
    if len(slow):
        # compact columns: one record may hold hundreds of thousands of values
        s_rec, s_tag, s_step = array("q"), array("q"), array("q")
        s_val, s_wall = array("d"), array("d")
        tag_index = {t: i for i, t in enumerate(tags)}
        room_box = [sum(1 for t in tags if t not in st.accs)]       # new tags in this chunk
        for i in slow.tolist():
            off = int(o[i])
            n_before = len(s_rec)
            big = _big_summary(buf, off, int(lens[i])) if lens[i] > BIG_RECORD else None
            if big is not None:
                # one record with very many values: decoded value by value, never whole
                ev_wall, ev_step, vals = big
            else:
                try:
                    ev = event_pb2.Event.FromString(bytes(buf[off:off + int(lens[i])]))
                except DecodeError:
                    st.undecodable += 1
                    continue
                if first_record and i == 0:
                    st.facts["tfevents_start_wall_time"] = ev.wall_time
                    if ev.WhichOneof("what") == "file_version":
                        st.facts["tfevents_file_version"] = ev.file_version
                if not ev.HasField("summary"):
                    continue
                ev_wall, ev_step, vals = ev.wall_time, ev.step, ev.summary.value
            try:
                _collect(vals, i, ev_step, ev_wall, st, tag_index, tags, room_box, s_rec, s_tag,
                         s_step, s_val, s_wall)
            except DecodeError:
                for col in (s_rec, s_tag, s_step, s_val, s_wall):
                    del col[n_before:]          # the whole record, or nothing of it
                st.undecodable += 1
        if s_rec:
            rec = np.concatenate([np.flatnonzero(fast), np.frombuffer(s_rec, np.int64)])
            order = np.argsort(rec, kind="stable")
            tag_ids = np.concatenate([tag_ids, np.frombuffer(s_tag, np.int64)])[order]
            steps = np.concatenate([steps, np.frombuffer(s_step, np.int64)])[order]
            values = np.concatenate([values, np.frombuffer(s_val, np.float64)])[order]
            walls = np.concatenate([walls, np.frombuffer(s_wall, np.float64)])[order]
    if not len(tag_ids):
        return
    if len(tags) == 1:
        acc = st.acc(tags[0])
        if acc is not None:
            acc.extend(steps, values, walls)
        return
    order = np.argsort(tag_ids, kind="stable")
    groups = []
    lo = 0
    for t, c in enumerate(np.bincount(tag_ids, minlength=len(tags)).tolist()):
        if c:
            groups.append((int(order[lo]), t, order[lo:lo + c]))
            lo += c
    groups.sort()          # new tags enter in the order the file first shows them
    for _, t, sel in groups:
        acc = st.acc(tags[t])
        if acc is not None:
            acc.extend(steps[sel], values[sel], walls[sel])


def _collect(vals, i: int, step: int, wall: float, st: _State, tag_index: dict, tags: list,
             room_box: list, s_rec, s_tag, s_step, s_val, s_wall) -> None:
    """The scalar values of one record (protobuf path) into the chunk's columns; tags
    past MAX_TAGS are counted, not collected."""
    for val in vals:
        tag = val.tag
        if val.HasField("metadata") and tag not in st.plugin:
            st.plugin[tag] = val.metadata.plugin_data.plugin_name
        kind = val.WhichOneof("value")
        if kind == "simple_value":
            x = val.simple_value
        elif kind == "tensor" and st.plugin.get(tag) == "scalars":
            x = _tensor_scalar(val.tensor)
            if x is None:
                continue
        elif kind == "image":
            st.add_image(tag, step, wall, val.image.encoded_image_string, st.rel)
            continue
        elif kind == "tensor" and st.plugin.get(tag) == "images":
            # TF2 image summary: a string tensor [width, height, image, image, ...]
            ims = list(val.tensor.string_val[2:])
            for j, data in enumerate(ims):
                st.add_image(tag if len(ims) == 1 else f"{tag}/{j}", step, wall, data, st.rel)
            continue
        else:
            continue
        t = tag_index.get(tag)
        if t is None:
            if tag not in st.accs:
                if not st.admit(tag, room_box[0]):   # past MAX_TAGS: counted, not collected
                    continue
                room_box[0] += 1
            t = tag_index[tag] = len(tags)
            tags.append(tag)
        s_rec.append(i)
        s_tag.append(t)
        s_step.append(step)
        s_val.append(x)
        s_wall.append(wall)


def _varint(b, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise DecodeError("bad varint")
        c = b[pos]
        pos += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, pos
        shift += 7


def _fields(b, pos: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    while pos < end:
        key, pos = _varint(b, pos, end)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(b, pos, end)
            yield field, wt, v
        elif wt == 1:
            if pos + 8 > end:
                raise DecodeError("cut fixed64")
            yield field, wt, (pos, pos + 8)
            pos += 8
        elif wt == 2:
            n, pos = _varint(b, pos, end)
            if pos + n > end:
                raise DecodeError("cut field")
            yield field, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise DecodeError("cut fixed32")
            yield field, wt, (pos, pos + 4)
            pos += 4
        else:
            raise DecodeError(f"wire type {wt}")


def _big_summary(buf, off: int, n: int):
    """A large record that is an Event with a summary (wall_time=1, step=2, summary=5,
    nothing else): (wall_time, step, values decoded one ``Summary.Value`` at a time).
    None for anything else, which then goes through ``Event.FromString`` as usual.  A
    record naming 300,000 tags is then never held as 300,000 protobuf objects."""
    from tensorboard.compat.proto import summary_pb2
    wall, step, summ = 0.0, 0, None
    try:
        for field, wt, v in _fields(buf, off, off + n):
            if field == 1 and wt == 1:
                wall = _DOUBLE(buf, v[0])[0]
            elif field == 2 and wt == 0:
                step = v - (1 << 64) if v >= 1 << 63 else v
            elif field == 5 and wt == 2 and summ is None:
                summ = v
            else:
                return None
    except DecodeError:
        return None
    if summ is None:
        return None

    def values():
        parse = summary_pb2.Summary.Value.FromString
        for field, wt, (a, b) in _fields(buf, *summ):
            if field == 1 and wt == 2:
                yield parse(bytes(buf[a:b]))
    return wall, step, values()


def _tensor_scalar(t) -> float | None:
    """The value of a one-element float/double TensorProto, else None."""
    fmt = _SCALAR_DTYPES.get(t.dtype)
    if fmt is None or any(d.size != 1 for d in t.tensor_shape.dim):
        return None
    if t.tensor_content:
        if len(t.tensor_content) != np.dtype(fmt).itemsize:
            return None
        return float(np.frombuffer(t.tensor_content, fmt)[0])
    vals = t.float_val if t.dtype == types_pb2.DT_FLOAT else t.double_val
    return float(vals[0]) if len(vals) == 1 else None


def _data_crc_ok(v: _Views, o: np.ndarray, lens: np.ndarray) -> np.ndarray:
    ok = np.zeros(len(o), bool)
    stored = v.u32[o + lens]
    for n in np.unique(lens).tolist():
        sel = np.flatnonzero(lens == n)
        if n > 1024:     # few large records (images, graphs): one at a time
            for i in sel.tolist():
                ok[i] = _masked_crc_rows(v.u8[None, o[i]:o[i] + n])[0] == stored[i]
        else:
            rows = v.u8[o[sel][:, None] + np.arange(n, dtype=np.int64)]
            ok[sel] = _masked_crc_rows(rows) == stored[sel]
    return ok


def _fast(v: _Views, o: np.ndarray, n: np.ndarray):
    """Decode the records laid out exactly as add_scalar writes them, vectorised.

    Returns (mask of records decoded here, then for those records only, in order:
    tag id, tag names, steps, values, wall_times).
    """
    u64 = v.u64
    none = (np.zeros(len(o), bool), np.empty(0, np.int64), [], np.empty(0, np.int64),
            np.empty(0), np.empty(0))
    if not len(u64):
        return none
    end = o + n
    lim = len(u64) - 1

    def at(pos):                  # uint64 at each byte offset (clipped to the buffer)
        return u64[np.minimum(pos, lim)]

    # bytes o..o+15: 0x09, wall_time (8 bytes), then 0x10 + step varint (<= 6 bytes)
    # or, for step 0 (not written), the summary's 0x2a
    w0 = at(o)
    w1 = at(o + 8)
    ok = (w0 & _B0) == np.uint64(0x09)
    walls_bits = (w0 >> _S8) | (w1 << _S56)
    has_step = ((w1 >> _S8) & _B0) == np.uint64(0x10)
    x = w1 >> _S16                          # up to 6 varint bytes
    term = ~x & _HI_BITS6                   # high bit clear = last byte of the varint
    low = term & (~term + _ONE)             # its bit 8*k + 7 for a (k+1)-byte varint
    ok &= ~has_step | (term != 0)           # longer steps (or negative): protobuf path
    vlen = (np.bitwise_count(low - _ONE).astype(np.int64) + 1) >> 3
    y = x & ((low << _ONE) - _ONE) & _LO7
    steps = y & np.uint64(0x7F)
    for k in range(1, 6):
        steps |= (y >> np.uint64(k)) & np.uint64(0x7F << (7 * k))
    steps[~has_step] = 0
    p = np.where(has_step, o + 10 + vlen, o + 9)
    # summary: 0x2a slen 0x0a vlen 0x0a taglen tag... 0x15 float32
    h = at(p)
    ok &= (h & np.uint64(0xFF00FF00FF)) == np.uint64(0x0A000A002A)
    slen = ((h >> _S8) & _B0).astype(np.int64)
    vl = ((h >> np.uint64(24)) & _B0).astype(np.int64)
    tl = ((h >> np.uint64(40)) & _B0).astype(np.int64)
    ok &= (slen == vl + 2) & (vl == tl + 7) & (vl < 0x80)
    vpos = p + 6 + tl
    ok &= vpos + 5 == end
    tail = at(vpos)      # 0x15, the float, then the data crc
    ok &= (tail & _B0) == np.uint64(0x15)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return none
    if len(idx) < len(o):
        tl, p, tail, walls_bits, steps = tl[idx], p[idx], tail[idx], walls_bits[idx], steps[idx]
    values = ((tail >> _S8) & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    values = values.astype(np.float64)
    walls = walls_bits.view(np.float64)
    steps = steps.view(np.int64)
    tag_ids = np.full(len(idx), -1, np.int16)
    tags: list[str] = []
    known: dict[bytes, int] = {}
    ts = p + 6
    counts = np.bincount(tl)
    for length in np.flatnonzero(counts).tolist():
        g = np.flatnonzero(tl == length) if counts[length] < len(tl) else None
        tsg = ts if g is None else ts[g]
        # the tag as uint64 words (the last one masked); all inside the record
        words = []
        for w in range(0, length, 8):
            col = u64[tsg + w]
            if length - w < 8:
                col &= np.uint64((1 << (8 * (length - w))) - 1)
            words.append(col)
        todo = np.ones(len(tsg), bool)
        r0 = 0
        while True:
            same = todo.copy()
            for col in words:
                same &= col == col[r0]
            raw = b"".join(int(col[r0]).to_bytes(8, "little") for col in words)[:length]
            t = _tag_id(raw, known, tags)
            if t >= 0x7FFF:          # absurdly many tags in one chunk: protobuf path
                t = -1
            if g is None:
                tag_ids[same] = t
            else:
                tag_ids[g[same]] = t
            todo &= ~same
            r0 = int(todo.argmax())
            if not todo[r0]:
                break
    bad = tag_ids < 0     # tag bytes that are not UTF-8: protobuf rejects them
    if bad.any():
        ok[idx[bad]] = False
        keep = ~bad
        idx, tag_ids, values, walls, steps = (idx[keep], tag_ids[keep], values[keep],
                                              walls[keep], steps[keep])
    return ok, tag_ids, tags, steps, values, walls


def _tag_id(raw: bytes, known: dict[bytes, int], tags: list[str]) -> int:
    t = known.get(raw)
    if t is None:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            t = -1
        else:
            t = len(tags)
            tags.append(name)
        known[raw] = t
    return t
