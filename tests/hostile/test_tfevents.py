"""Hostile TensorBoard event files: garbage, truncation at any byte, absurd lengths,
bad CRCs, non-finite values, steps going backwards."""
from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest

pytest.importorskip("lorascope.ingest.tfevents")
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # noqa: E402

from hostile.util import analyze, base_run, problems_of  # noqa: E402
from lorascope.ingest.tfevents import parse  # noqa: E402

pytestmark = pytest.mark.timeout(240)

STEPS = 30


@pytest.fixture(scope="module")
def real_events(tmp_path_factory) -> bytes:
    """An event file written by torch's SummaryWriter (what HF Trainer and kohya use)."""
    from torch.utils.tensorboard import SummaryWriter
    d = tmp_path_factory.mktemp("sw")
    w = SummaryWriter(log_dir=str(d))
    for s in range(1, STEPS + 1):
        w.add_scalar("train/loss", 2.0 * math.exp(-s / 10) + 0.2, s)
        w.add_scalar("train/learning_rate", 1e-4, s)
    w.add_text("notes", "hello", 1)
    w.close()
    f = next(p for p in d.iterdir() if p.name.startswith("events.out.tfevents"))
    return f.read_bytes()


def frames(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 12 <= len(data):
        out.append(pos)
        pos += struct.unpack_from("<Q", data, pos)[0] + 16
    return out


def record(payload: bytes, *, good_len_crc=True, good_data_crc=True) -> bytes:
    head = struct.pack("<Q", len(payload))
    lc = masked_crc32c(head) if good_len_crc else masked_crc32c(head) ^ 1
    dc = masked_crc32c(payload) if good_data_crc else masked_crc32c(payload) ^ 1
    return head + struct.pack("<I", lc) + payload + struct.pack("<I", dc)


def scalar(tag: str, value: float, step: int) -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    return event_pb2.Event(wall_time=1.7e9 + step, step=step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])).SerializeToString()


def loss_series(parsed):
    return next((r for r in parsed.series if r.tag == "train/loss"), None)


def cut_points(n: int) -> list[int]:
    """Every 1/40 of the file plus a few bytes around the edges."""
    return sorted({0, 1, 7, 8, 11, 12, 13, 15, 16, n - 1, n - 4, n - 5} | set(range(17, n, max(1, n // 40))))


@pytest.mark.parametrize("k", range(44))
def test_truncated_anywhere_keeps_every_complete_record(real_events, tmp_path, k):
    cuts = cut_points(len(real_events))
    cut = cuts[k % len(cuts)] if k < len(cuts) else None
    if cut is None:
        pytest.skip("fewer cut points than cases")
    p = tmp_path / "events.out.tfevents.1.host"
    p.write_bytes(real_events[:cut])
    r = parse(p, p.name)
    full = loss_series(parse_bytes(real_events, tmp_path))
    got = loss_series(r)
    if got is not None:   # what was kept is a prefix of the real curve, values intact
        assert np.array_equal(got.steps, full.steps[:len(got.steps)])
        assert np.allclose(got.values, full.values[:len(got.values)])
    if cut not in frames(real_events) and cut != len(real_events):
        assert r.source.problems, f"cut at {cut} of {len(real_events)} went unnoticed"


def parse_bytes(data: bytes, tmp_path):
    p = tmp_path / "events.out.tfevents.full"
    p.write_bytes(data)
    return parse(p, p.name)


@pytest.mark.parametrize("frac", [0.13, 0.5, 0.77, 0.999])
def test_truncated_file_through_the_cli(real_events, tmp_path, frac):
    run = base_run(tmp_path / "run")
    (run / "runs").mkdir()
    (run / "runs" / "events.out.tfevents.1.host").write_bytes(real_events[:int(len(real_events) * frac)])
    r, doc, _ = analyze(run, tmp_path / "out")
    probs = problems_of(doc, "events.out.tfevents")
    assert any("truncated" in p for p in probs), probs


def test_garbage_event_file_alone_is_exit_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.out.tfevents.1.host").write_bytes(os.urandom(4096))
    r, doc, _ = analyze(run, tmp_path / "out")
    assert r.returncode == 2 and "nothing readable" in r.stderr


def test_absurd_record_length_with_a_valid_crc_allocates_nothing(tmp_path):
    """A length field of 2^62 whose CRC checks out: the reader must not try to read it."""
    run = base_run(tmp_path / "run")
    good = record(scalar("train/loss", 1.0, 1))
    head = struct.pack("<Q", 1 << 62)
    evil = head + struct.pack("<I", masked_crc32c(head)) + b"\0" * 64
    (run / "events.out.tfevents.1.host").write_bytes(good + evil)
    r, doc, _ = analyze(run, tmp_path / "out", limited=True)
    probs = problems_of(doc, "events.out.tfevents")
    assert any("absurd record length" in p or "truncated" in p for p in probs), probs


@pytest.mark.parametrize("where", ["length", "data"])
def test_bad_crc_in_the_middle(tmp_path, where):
    recs = [record(scalar("train/loss", 1.0 / s, s)) for s in range(1, 11)]
    recs[5] = record(scalar("train/loss", 99.0, 6), good_len_crc=(where != "length"),
                     good_data_crc=(where != "data"))
    p = tmp_path / "events.out.tfevents.1.host"
    p.write_bytes(b"".join(recs))
    r = parse(p, p.name, verify_data_crc=True)
    s = loss_series(r)
    assert r.source.problems, "a corrupt record went unnoticed"
    # never the corrupt value as if it were real
    assert s is None or 99.0 not in s.values.tolist()


def test_nonfinite_values_give_valid_json_and_a_finding(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    vals = [2.0, 1.8, 1.6, 1.5, 1.4, float("nan"), float("inf"), float("-inf"), float("nan"), 1.3] * 3
    data = b"".join(record(scalar("train/loss", v, s)) for s, v in enumerate(vals, 1))
    data += b"".join(record(scalar("train/grad_norm", float("inf"), s)) for s in range(1, 31))
    (run / "events.out.tfevents.1.host").write_bytes(data)
    r, doc, page = analyze(run, tmp_path / "out")
    assert r.returncode == 1
    assert "loss.nonfinite" in {f["rule"] for f in doc["findings"]}
    nan_series = [s for s in doc["series"] if s["nonfinite"]]
    assert nan_series, doc["series"]


@pytest.mark.parametrize("steps", [
    list(range(30, 0, -1)),                                      # backwards throughout
    list(range(1, 16)) + list(range(1, 16)),                     # restart in one file
    [1, 2, 3, -5, 4, 2 ** 63 - 1, 5, -(2 ** 63), 6, 7],          # int64 extremes
])
def test_steps_going_backwards_or_absurd(tmp_path, steps):
    run = tmp_path / "run"
    run.mkdir()
    data = b"".join(record(scalar("train/loss", 1.0 + 0.01 * i, s)) for i, s in enumerate(steps))
    (run / "events.out.tfevents.1.host").write_bytes(data)
    r, doc, _ = analyze(run, tmp_path / "out")
    assert doc is not None


def test_zero_length_and_tiny_files(tmp_path):
    run = base_run(tmp_path / "run")
    for i, b in enumerate([b"", b"\0", b"\0" * 11, b"\xff" * 12, record(b"")]):
        (run / f"events.out.tfevents.{i}.host").write_bytes(b)
    r, doc, _ = analyze(run, tmp_path / "out")
    assert len(problems_of(doc, "events.out.tfevents")) >= 4


def test_event_file_named_as_a_directory_or_a_fifo(tmp_path):
    run = base_run(tmp_path / "run")
    (run / "events.out.tfevents.dir").mkdir()
    os.mkfifo(run / "events.out.tfevents.fifo")        # open() on it would block forever
    r, doc, _ = analyze(run, tmp_path / "out")
    assert doc is not None
