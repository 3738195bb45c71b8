"""The batched tensor scan (lorascope.ingest._tensorscan) against a float64 reference:
every statistic, for every dtype it reads, with non-finite values, subnormal halves,
negative-only and all-zero tensors, gaps between tensors, tensors larger than a span
(scanned whole) and larger than a buffer (scanned in blocks), and one thread against
several."""
from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lorascope.ingest._tensorscan as ts

@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def scan_path(request, monkeypatch):
    """Every test runs through the compiled pass (when it was built) and through numpy
    alone: both must give the float64 reference's statistics."""
    if request.param == "compiled":
        if ts.KERNEL is None:
            pytest.skip("the compiled pass is not built here (no C compiler at install)")
    else:
        monkeypatch.setattr(ts, "KERNEL", None)
    return request.param


NP = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "|i1", "BF16": None}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (what torch writes)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, 0x7FC0, r).astype("<u2")


def stored(dtype: str, values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(bytes as the file holds them, the float64 values those bytes mean)."""
    if dtype == "BF16":
        bits = bf16_bits(values)
        return bits.tobytes(), (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    a = np.asarray(values).astype(NP[dtype])
    return a.tobytes(), a.astype(np.float64)


def write(path: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]],
          gaps: list[int] | None = None) -> list[ts.TensorInfo]:
    """A safetensors file; gaps[i] filler bytes (a U8 tensor) before tensor i."""
    header: dict = {}
    blob = bytearray()
    for i, (name, dtype, shape, raw) in enumerate(tensors):
        g = (gaps or [0] * len(tensors))[i]
        if g:
            header[f"filler{i}"] = {"dtype": "U8", "shape": [g], "data_offsets": [len(blob), len(blob) + g]}
            blob += bytes(range(256)) * (g // 256) + bytes(g % 256)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + bytes(blob))
    start = 8 + len(h)
    return [ts.TensorInfo(n, d["dtype"], tuple(d["shape"]), start + d["data_offsets"][0],
                          d["data_offsets"][1] - d["data_offsets"][0])
            for n, d in header.items() if not n.startswith("filler")]


def reference(x: np.ndarray, axis: int | None, rank: int) -> dict:
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    c = np.where(bad, 0.0, x)
    fin = x.size - int(bad.sum())
    out = {"nonfinite": int(bad.sum()), "abs_max": float(np.abs(c).max()) if c.size else 0.0,
           "mean_abs": float(np.abs(c).sum() / fin) if fin else 0.0,
           "norm": float(np.sqrt((c ** 2).sum())),
           "zero": bool(x.size and not bad.any() and not c.any())}
    if axis is not None:
        m = c.reshape(-1, rank) if axis == 0 else c.reshape(rank, -1)
        out["gram"] = m.T @ m if axis == 0 else m @ m.T
    return out


def scan_file(path: Path, infos: list[ts.TensorInfo], axes: list[tuple[int | None, int]],
              workers: int = 1) -> list[ts.Job]:
    jobs = [ts.Job(t, ax, r) for t, (ax, r) in zip(infos, axes)]
    ts.scan(path, jobs, workers=workers)
    return jobs


def check(job: ts.Job, ref: dict) -> None:
    s = job.acc.stat(job.t)
    assert s.nonfinite == ref["nonfinite"], job.t.name
    assert s.zero == ref["zero"], job.t.name
    assert s.abs_max == ref["abs_max"], job.t.name          # exact: read from the bits
    assert s.mean_abs == pytest.approx(ref["mean_abs"], rel=1e-4, abs=1e-30), job.t.name
    assert s.norm == pytest.approx(ref["norm"], rel=1e-4, abs=1e-30), job.t.name
    if "gram" in ref:
        np.testing.assert_allclose(job.acc.gram, ref["gram"], rtol=1e-4,
                                   atol=1e-5 * max(1e-30, np.abs(ref["gram"]).max()))


def _specials(dtype: str, rng: np.random.Generator, n: int) -> np.ndarray:
    big = {"F16": 6e4, "BF16": 1e38, "F32": 1e38, "F64": 1e100, "I8": 100}[dtype]
    tiny = {"F16": 3e-8, "BF16": 1e-40, "F32": 1e-44, "F64": 1e-100, "I8": 1}[dtype]
    if dtype == "I8":
        return rng.integers(-128, 128, n)
    pool = np.array([0.0, -0.0, tiny, -tiny, big, -big, np.inf, -np.inf, np.nan, 1.0, -1.0])
    return rng.choice(pool, n)


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64", "I8"])
@pytest.mark.parametrize("workers", [1, 3])
def test_every_statistic_matches_float64(tmp_path, dtype, workers):
    rng = np.random.default_rng(1)
    cases = []
    shapes = [((8, 40), 1, 8), ((40, 8), 0, 8), ((4, 6, 3, 3), 1, 4), ((30, 4, 1, 1), 0, 4),
              ((7,), None, 0), ((), None, 0), ((300, 16), 0, 16), ((16, 300), 1, 16),
              ((5, 5), None, 0)]
    for k, (shape, axis, rank) in enumerate(shapes * 4):
        n = int(np.prod(shape))
        v = rng.standard_normal(n) * 0.02
        kind = k // len(shapes)
        if kind == 1:
            v = -np.abs(v)                    # negative only: max from the unsigned view
        elif kind == 2:
            v[:] = 0.0
            if n:
                v[0] = -0.0
        elif kind == 3 and n:
            w = _specials(dtype, rng, n)
            v = np.where(rng.random(n) < 0.3, w, v)
        if dtype == "I8":
            v = np.round(v * 3000).clip(-128, 127)
        raw, meaning = stored(dtype, v)
        cases.append((f"t{k}", dtype, shape, raw, meaning, axis, rank))
    f = tmp_path / "a.safetensors"
    gaps = [int(g) for g in rng.choice([0, 0, 0, 2, 4, 6, 4096, 100_000], len(cases))]
    if dtype in ("F16", "BF16"):
        gaps = [g + 1 if g == 2 else g for g in gaps]         # an odd gap breaks alignment
    infos = write(f, [(c[0], c[1], c[2], c[3]) for c in cases], gaps)
    # spans of 512 elements; tensors up to 2048 scanned whole, larger ones in blocks
    with mock.patch.object(ts, "BATCH", 512), mock.patch.object(ts, "WHOLE", 2048), \
            mock.patch.object(ts, "PARALLEL_MIN_BYTES", 0), mock.patch.object(ts, "_cpus", lambda: workers):
        jobs = scan_file(f, infos, [(c[5], c[6]) for c in cases], workers)
    for job, c in zip(jobs, cases):
        check(job, reference(c[4], c[5], c[6]))


def test_a_batch_spans_several_tensors_and_large_ones_are_split(tmp_path):
    infos = write(tmp_path / "b.safetensors",
                  [(f"t{i}", "BF16", (4, 64), stored("BF16", np.ones(256))[0]) for i in range(10)]
                  + [("big", "F16", (4096, 8), stored("F16", np.ones(4096 * 8))[0]),
                     ("bigger", "F16", (8192, 8), stored("F16", np.ones(8192 * 8))[0])])
    with mock.patch.object(ts, "BATCH", 1024), mock.patch.object(ts, "WHOLE", 40000), \
            mock.patch.object(ts, "KERNEL_SPANS", 1):
        tasks = ts.plan(ts.Table(infos))
        assert [len(rows) for _, rows in tasks] == [4, 4, 2, 1, 1]    # 1024 elements per span
        assert [kind for kind, _ in tasks] == [1, 1, 1, 1, 0]        # whole, then in blocks
        assert [infos[r].name for r in tasks[3][1]] == ["big"]
        # a span does not end between a layer's down and up weight
        tab = ts.Table(infos, partner=[-1, -1, -1, 4, 3, -1, -1, -1, -1, -1, -1, -1])
        assert [len(rows) for _, rows in ts.plan(tab)] == [3, 4, 3, 1, 1]


def test_f16_subnormals_and_extremes_are_exact(tmp_path):
    # every finite half, positive and negative: the bit-trick widening is exact for all
    bits = np.arange(0, 0x7C00, dtype=np.uint16)
    vals = np.concatenate([bits, bits | 0x8000]).view(np.float16)
    f = tmp_path / "h.safetensors"
    infos = write(f, [("all", "F16", (vals.size,), vals.tobytes())])
    with mock.patch.object(ts, "BATCH", 4096):
        (job,) = scan_file(f, infos, [(None, 0)])
    check(job, reference(vals, None, 0))
    assert job.acc.abs_max == 65504.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_files_match_the_reference(tmp_path, data):
    n_t = data.draw(st.integers(1, 6))
    cases, gaps = [], []
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    for k in range(n_t):
        dtype = data.draw(st.sampled_from(["F16", "BF16", "F32", "F64"]))
        rank = data.draw(st.integers(1, 6))
        other = data.draw(st.integers(1, 50))
        axis = data.draw(st.sampled_from([None, 0, 1]))
        shape = (other, rank) if axis == 0 else (rank, other)
        n = rank * other
        v = rng.standard_normal(n) * data.draw(st.sampled_from([1e-3, 1.0, 100.0]))
        if data.draw(st.booleans()):
            v = np.where(rng.random(n) < 0.2, _specials(dtype, rng, n), v)
        raw, meaning = stored(dtype, v)
        cases.append((f"t{k}", dtype, shape, raw, meaning, axis, rank))
        gaps.append(data.draw(st.sampled_from([0, 0, 1, 2, 3, 8])))
    f = tmp_path / f"r{data.draw(st.integers(0, 10 ** 9))}.safetensors"
    infos = write(f, [(c[0], c[1], c[2], c[3]) for c in cases], gaps)
    batch = data.draw(st.sampled_from([16, 64, 1 << 20]))
    with mock.patch.object(ts, "BATCH", batch):
        jobs = scan_file(f, infos, [(c[5], c[6]) for c in cases])
    for job, c in zip(jobs, cases):
        check(job, reference(c[4], c[5], c[6]))


def test_scalar_reads_without_the_map(tmp_path):
    f = tmp_path / "s.safetensors"
    infos = write(f, [("a", "BF16", (), stored("BF16", np.array([8.0]))[0]),
                      ("b", "F16", (), stored("F16", np.array([0.5]))[0]),
                      ("c", "F32", (), stored("F32", np.array([np.nan]))[0])])
    with open(f, "rb") as fh:
        assert [ts.scalar(fh.fileno(), t) for t in infos] == [8.0, 0.5, None]


def test_paired_jobs_get_the_update_norm_and_free_their_grams(tmp_path):
    rng = np.random.default_rng(3)
    down, up = rng.standard_normal((6, 70)), rng.standard_normal((50, 6))
    f = tmp_path / "p.safetensors"
    infos = write(f, [("up", "F16", up.shape, stored("F16", up)[0]),
                      ("down", "BF16", down.shape, stored("BF16", down)[0])])
    u, d = ts.Job(infos[0], 0, 6), ts.Job(infos[1], 1, 6)
    ts.pair(d, u)
    ts.scan(f, [u, d])
    exact = stored("F16", up)[1] @ stored("BF16", down)[1]
    assert d.cross == u.cross == pytest.approx(float((exact ** 2).sum()), rel=1e-5)
    assert d.acc.gram is None and u.acc.gram is None


def _many_tensors(tmp_path: Path) -> tuple[Path, list[ts.TensorInfo], list[tuple], list[dict]]:
    rng = np.random.default_rng(5)
    cases = []
    for k in range(40):
        dtype = ["F16", "BF16", "F32"][k % 3]
        v = rng.standard_normal(8 * 30) * 0.05
        if k == 7:
            v[3] = np.nan
        cases.append((f"t{k}", dtype, (8, 30) if k % 2 else (30, 8), stored(dtype, v)))
    f = tmp_path / "many.safetensors"
    infos = write(f, [(n, d, sh, raw) for n, d, sh, (raw, _) in cases])
    axes = [(1 if k % 2 else 0, 8) for k in range(40)]
    refs = [reference(c[3][1], ax, r) for c, (ax, r) in zip(cases, axes)]
    return f, infos, axes, refs


def test_threads_scan_parts_of_the_file_and_give_the_serial_results(tmp_path, monkeypatch):
    f, infos, axes, refs = _many_tensors(tmp_path)
    real = ts.Scanner.task
    seen = set()

    def tagged(self, task):                    # leaves a trace of the thread it ran in
        seen.add(threading.get_ident())
        time.sleep(0.01)                       # slow tasks: every thread gets some
        return real(self, task)

    monkeypatch.setattr(ts, "BATCH", 256)
    monkeypatch.setattr(ts, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ts, "_cpus", lambda: 3)
    jobs = [ts.Job(t, ax, r) for t, (ax, r) in zip(infos, axes)]
    ts.pair(jobs[0], jobs[39])                 # first and last tensor: different spans
    ts.scan(f, jobs, workers=1)
    monkeypatch.setattr(ts.Scanner, "task", tagged)
    par = [ts.Job(t, ax, r) for t, (ax, r) in zip(infos, axes)]
    ts.pair(par[0], par[39])
    ts.scan(f, par, workers=3)
    assert len(seen) >= 2 and threading.get_ident() in seen     # this thread and another
    for j, p, ref in zip(jobs, par, refs):
        check(p, {k: v for k, v in ref.items() if k != "gram"})
        assert p.acc.stat(p.t) == j.acc.stat(j.t)                # bit for bit
    up, down = refs[0]["gram"], refs[39]["gram"]
    assert par[0].cross == par[39].cross == jobs[0].cross
    assert par[0].cross == pytest.approx(float((up * down).sum()), rel=1e-5)


def test_without_threads_one_thread_scans_everything(tmp_path, monkeypatch):
    f, infos, axes, refs = _many_tensors(tmp_path)
    monkeypatch.setattr(ts, "BATCH", 256)
    monkeypatch.setattr(ts, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ts, "_cpus", lambda: 3)

    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    jobs = scan_file(f, infos, axes, workers=3)
    for j, ref in zip(jobs, refs):
        check(j, ref)


def test_an_error_in_a_scan_thread_reaches_the_caller(tmp_path, monkeypatch):
    f, infos, axes, _ = _many_tensors(tmp_path)
    monkeypatch.setattr(ts, "BATCH", 256)
    monkeypatch.setattr(ts, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ts, "_cpus", lambda: 3)
    real, main = ts.Scanner.task, threading.get_ident()

    def fails_elsewhere(self, task):
        if threading.get_ident() != main:
            raise ts.FileShrank(0, 10, 5)
        time.sleep(0.01)
        return real(self, task)
    monkeypatch.setattr(ts.Scanner, "task", fails_elsewhere)
    with pytest.raises(ts.FileShrank, match="shrinking while read"):
        scan_file(f, infos, axes, workers=3)


def test_statistics_are_python_floats(tmp_path):
    # numpy scalars would leak into the JSON report and compare differently
    f = tmp_path / "t.safetensors"
    infos = write(f, [("a", "BF16", (4, 8), stored("BF16", np.arange(32) / 7)[0]),
                      ("b", "F16", (8, 4), stored("F16", np.arange(32) / 9)[0])])
    for j in scan_file(f, infos, [(1, 4), (None, 0)]):
        s = j.acc.stat(j.t)
        assert all(type(v) is float for v in (s.abs_max, s.norm, s.mean_abs)), s
        assert type(s.nonfinite) is int and type(s.zero) is bool


@pytest.mark.parametrize("dtype,nan_bits", [("BF16", 0x7F81), ("F16", 0x7C01), ("F32", 0x7F800001)])
def test_signalling_nan_patterns_count_as_non_finite_without_a_warning(tmp_path, dtype, nan_bits):
    # a broken adapter's NaNs need not be quiet ones; numpy warns when it widens those,
    # and a warning on stderr is not what `lorascope inspect` prints
    rng = np.random.default_rng(3)
    raw, _ = stored(dtype, rng.standard_normal(64) * 0.1)
    width = 4 if dtype == "F32" else 2
    bits = np.frombuffer(raw, f"<u{width}").copy()
    bits[[5, 40]] = nan_bits
    bits[41] = nan_bits | (1 << (8 * width - 1))          # a negative one too
    infos = write(tmp_path / "a.safetensors", [("w", dtype, (4, 16), bits.tobytes())])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [job] = scan_file(tmp_path / "a.safetensors", infos, [(1, 4)])
    s = job.acc.stat(job.t)
    assert s.nonfinite == 3
    assert np.isfinite(s.abs_max) and np.isfinite(s.norm)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_kohya_f32_layers_with_their_alphas_in_one_span(tmp_path, layers):
    # an F32 kohya file: alpha, down, up of each layer side by side, all read as one span
    # (the alphas are F32 scalars there, so they share the span with the weights)
    rng = np.random.default_rng(7)
    tensors, refs, axes, exact = [], [], [], []
    for i in range(layers):
        down, up = (stored("F32", rng.standard_normal(sh) * 0.1)[1].reshape(sh)
                    for sh in ((4, 24), (20, 4)))
        tensors += [(f"l{i}.alpha", "F32", (), stored("F32", np.array(2.0 + i))[0]),
                    (f"l{i}.lora_down.weight", "F32", down.shape, stored("F32", down)[0]),
                    (f"l{i}.lora_up.weight", "F32", up.shape, stored("F32", up)[0])]
        axes += [(None, 0), (1, 4), (0, 4)]
        refs += [reference(np.array([2.0 + i]), None, 0), reference(down, 1, 4), reference(up, 0, 4)]
        exact.append(float(((up @ down) ** 2).sum()))
    f = tmp_path / "k.safetensors"
    infos = write(f, tensors)
    assert len(ts.plan(ts.Table(infos))) == 1
    jobs = [ts.Job(t, ax, r) for t, (ax, r) in zip(infos, axes)]
    for i in range(layers):
        ts.pair(jobs[3 * i + 1], jobs[3 * i + 2])
    ts.scan(f, jobs)
    for i, (job, ref) in enumerate(zip(jobs, refs)):
        s = job.acc.stat(job.t)
        assert s.abs_max == ref["abs_max"] and s.nonfinite == 0
        assert s.norm == pytest.approx(ref["norm"], rel=1e-5)
        assert s.mean_abs == pytest.approx(ref["mean_abs"], rel=1e-5)
    for i in range(layers):
        assert jobs[3 * i + 1].cross == jobs[3 * i + 2].cross == pytest.approx(exact[i], rel=1e-5)


def _kernel_call(code: int, raw: np.ndarray, shapes: list[tuple[int, int, int]]):
    """The compiled pass on ``raw`` (tensors back to back): (maxbits, abs sums, squares,
    Gram matrices)."""
    k = ts.KERNEL
    n = np.array([a * b for a, b, _ in shapes], np.int64)
    start = np.concatenate(([0], np.cumsum(n)[:-1])).astype(np.int64)
    axis = np.array([ax for _, _, ax in shapes], np.int8)
    rank = np.array([a if ax == 1 else b for a, b, ax in shapes], np.int64)
    goff = np.concatenate(([0], np.cumsum(rank * rank)[:-1])).astype(np.int64)
    out = (np.zeros(len(n), np.uint32), np.zeros(len(n)), np.zeros(len(n)))
    gram = np.zeros(int((rank * rank).sum()))
    k.scan_span(code, raw.view(np.uint8), start, n, axis, rank, goff, *out, gram,
                np.zeros(0, np.float32), np.zeros(k.SCRATCH, np.float32))
    grams = [gram[o:o + r * r].reshape(r, r) for o, r in zip(goff.tolist(), rank.tolist())]
    return (*out, grams, start, n)


@pytest.mark.parametrize("dtype,code", [("F16", 1), ("BF16", 2), ("F32", 3)])
def test_compiled_pass_gives_every_rank_its_gram_matrix(dtype, code, scan_path):
    """Every rank up to the kernel's, both layouts, odd widths (column blocks with a
    tail), through the kernel's own entry: the ranks the scan sends to BLAS instead
    included, so its general loops are checked too."""
    if scan_path != "compiled":
        pytest.skip("the compiled pass itself")
    rng = np.random.default_rng(7)
    shapes = []
    for r in list(range(1, 17)) + [24, 31, 32, 48, 64]:
        width = int(rng.integers(1, 700))
        shapes += [(r, width, 1), (width, r, 0)]
    shapes += [(4, 17000, 1), (17000, 4, 0), (2000, 16, 0)]     # lanes flushed mid-tensor
    values = [rng.standard_normal(a * b) * 0.05 for a, b, _ in shapes]
    raw, meaning = stored(dtype, np.concatenate(values))
    bits, asum, qsum, grams, start, n = _kernel_call(code, np.frombuffer(raw, np.uint8).copy(), shapes)
    for k, (a, b, ax) in enumerate(shapes):
        x = meaning[start[k]:start[k] + n[k]]
        m = x.reshape(a, b)
        ref = m @ m.T if ax == 1 else m.T @ m
        np.testing.assert_allclose(grams[k], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        assert asum[k] == pytest.approx(np.abs(x).sum(), rel=1e-5)
        assert qsum[k] == pytest.approx((x * x).sum(), rel=1e-5)
        top = np.abs(x).max()
        assert ts._bits_to_float(dtype, np.array([bits[k]]))[0] == top


def test_compiled_pass_refuses_offsets_outside_its_buffers(scan_path):
    if scan_path != "compiled":
        pytest.skip("the compiled pass itself")
    k = ts.KERNEL
    raw = np.zeros(64, np.uint8)                        # 32 halves
    one = lambda v: np.array([v], np.int64)             # noqa: E731
    out = (np.zeros(1, np.uint32), np.zeros(1), np.zeros(1))
    scratch = np.zeros(k.SCRATCH, np.float32)
    none = np.zeros(0, np.float32)
    ok = dict(start=one(0), count=one(32), goff=one(-1), rank=one(0))
    k.scan_span(1, raw, ok["start"], ok["count"], np.array([-1], np.int8), ok["rank"], ok["goff"],
                *out, np.zeros(0), none, scratch)
    bad = [dict(ok, count=one(33)), dict(ok, start=one(1)), dict(ok, start=one(-1)),
           dict(ok, goff=one(0), rank=one(4)),                  # Gram beyond its array
           dict(ok, goff=one(0), rank=one(5)),                  # 32 is not a multiple of 5
           dict(ok, goff=one(0), rank=one(k.RANK + 1))]
    for b in bad:
        with pytest.raises(ValueError):
            k.scan_span(1, raw, b["start"], b["count"], np.array([0], np.int8), b["rank"], b["goff"],
                        *out, np.zeros(4), none, scratch)
    with pytest.raises(ValueError):                         # scratch too small
        k.scan_span(1, raw, ok["start"], ok["count"], np.array([-1], np.int8), ok["rank"],
                    ok["goff"], *out, np.zeros(0), none, scratch[:10])


def test_a_compiled_module_of_another_build_is_not_used(scan_path):
    """A module left in place by an older build (its ABI differs) must not be called with
    this code's arguments: the scan falls back to numpy."""
    import subprocess
    import sys
    if scan_path != "numpy":
        pytest.skip("one run is enough")
    code = ("import sys, types; m = types.ModuleType('lorascope.ingest._scankernel'); m.ABI = -1; "
            "sys.modules[m.__name__] = m; import lorascope.ingest._tensorscan as t; "
            "print('numpy' if t.KERNEL is None else 'stale')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(__import__("os").environ, PYTHONPATH=str(Path(ts.__file__).parents[2])))
    assert r.stdout.strip() == "numpy", r.stderr
