"""lorascope.ingest.tfevents: TensorBoard event files -> RawSeries."""
from __future__ import annotations

import struct
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

from lorascope.ingest import tfevents
from lorascope.ingest.tfevents import parse

WILD = Path("/work/shared/wild-runs")


# ------------------------------------------------------------------- helpers
def write_records(path: Path, events) -> list[int]:
    """Write Events (or raw bytes) with tensorboard's RecordWriter; return frame starts."""
    starts = []
    with open(path, "wb") as fh:
        w = RecordWriter(fh)
        for ev in events:
            starts.append(fh.tell())
            w.write(ev if isinstance(ev, bytes) else ev.SerializeToString())
    return starts


def frame_starts(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 12 <= len(data):
        out.append(pos)
        pos += struct.unpack_from("<Q", data, pos)[0] + 16
    return out


def scalar_event(tag, value, step, wall=1.7e9):
    return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]))


def tensor_event(tag, value, step, *, dtype=types_pb2.DT_FLOAT, plugin="scalars",
                 content=False, wall=1.7e9):
    t = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=TensorShapeProto())
    if content:
        t.tensor_content = np.asarray([value], "<f4" if dtype == types_pb2.DT_FLOAT
                                      else "<f8").tobytes()
    elif dtype == types_pb2.DT_FLOAT:
        t.float_val.append(value)
    else:
        t.double_val.append(value)
    v = summary_pb2.Summary.Value(tag=tag, tensor=t)
    if plugin:
        v.metadata.plugin_data.plugin_name = plugin
    return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=[v]))


def by_tag(parsed):
    return {s.tag: s for s in parsed.series}


def points(parsed):
    return {s.tag: list(zip(s.steps.tolist(), s.values.tolist())) for s in parsed.series}


def torch_writer_file(d: Path, steps=range(50), tags=("train/loss", "train/learning_rate")):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    w = SummaryWriter(str(d), max_queue=1000)
    for s in steps:
        for j, tag in enumerate(tags):
            w.add_scalar(tag, 1.0 / (s + 1) + j, s)
    w.close()
    (f,) = d.glob("events.out.tfevents.*")
    return f


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    return torch_writer_file(tmp_path_factory.mktemp("tb"), steps=range(300))


# ------------------------------------------------------------ normal files
def test_torch_summary_writer_matches_event_accumulator(torch_file):
    from tensorboard.backend.event_processing import event_accumulator as ea
    p = parse(torch_file, "runs/x/" + torch_file.name)
    assert p.source.kind == "tfevents" and p.source.path == "runs/x/" + torch_file.name
    assert p.source.problems == []
    assert p.source.records == 1 + 2 * 300        # file_version + scalars
    acc = ea.EventAccumulator(str(torch_file), size_guidance={"scalars": 0})
    acc.Reload()
    got = by_tag(p)
    assert sorted(got) == sorted(acc.Tags()["scalars"]) == ["train/learning_rate", "train/loss"]
    for tag, s in got.items():
        ref = acc.Scalars(tag)
        assert s.steps.dtype == np.int64 and s.values.dtype == np.float64
        assert s.wall_times.dtype == np.float64
        assert s.steps.tolist() == [e.step for e in ref]
        assert s.values.tolist() == [e.value for e in ref]
        assert s.wall_times.tolist() == [e.wall_time for e in ref]
        assert s.source == p.source.path
    assert p.facts["tfevents_file_version"] == "brain.Event:2"
    assert abs(p.facts["tfevents_start_wall_time"] - acc.FirstEventTimestamp()) < 1e-6


def test_scalar_records_take_the_fast_path(torch_file, monkeypatch):
    calls = []
    real = event_pb2.Event

    class Counting:
        @staticmethod
        def FromString(b):
            calls.append(len(b))
            return real.FromString(b)

    monkeypatch.setattr(tfevents, "event_pb2", types.SimpleNamespace(Event=Counting))
    p = parse(torch_file, "x")
    assert sum(len(s.steps) for s in p.series) == 600
    assert len(calls) == 1       # only the file_version record needs protobuf


def test_several_files_and_steps_going_backwards(tmp_path):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    w = SummaryWriter(str(tmp_path / "a"))
    for s in list(range(5)) + list(range(3)):     # a restarted run in the same file
        w.add_scalar("loss", float(s), s)
    w.close()
    other = torch_writer_file(tmp_path / "b", steps=range(0, 40, 10), tags=("lr/unet",))
    (fa,) = (tmp_path / "a").glob("events.*")
    pa, pb = parse(fa, "a/f"), parse(other, "b/f")
    assert by_tag(pa)["loss"].steps.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]   # not sorted
    assert list(by_tag(pb)) == ["lr/unet"] and by_tag(pb)["lr/unet"].steps.tolist() == [0, 10, 20, 30]
    assert by_tag(pb)["lr/unet"].source == "b/f"


def test_tf2_tensor_scalars_and_skipped_summaries(tmp_path):
    f = tmp_path / "events.out.tfevents.1.host"
    text = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"hello"])
    events = [
        event_pb2.Event(wall_time=10.0, file_version="brain.Event:2"),
        tensor_event("epoch_loss", 0.5, 0, wall=11.0),                    # with metadata
        tensor_event("epoch_loss", 0.25, 1, plugin=None),                 # later: none
        tensor_event("epoch_loss", 0.125, 2, plugin=None, content=True),  # tensor_content
        tensor_event("lr", 1e-4, 0, dtype=types_pb2.DT_DOUBLE),
        tensor_event("lr", 2e-4, 1, dtype=types_pb2.DT_DOUBLE, plugin=None, content=True),
        tensor_event("hist", 3.0, 0, plugin="histograms"),                # not a scalar
        tensor_event("nometa", 3.0, 0, plugin=None),                      # unknown plugin
        event_pb2.Event(wall_time=12.0, step=3, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="notes", tensor=text)])),
        event_pb2.Event(wall_time=12.0, step=3, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="img", image=summary_pb2.Summary.Image(
                height=1, width=1, colorspace=3, encoded_image_string=b"\x89PNG"))])),
        event_pb2.Event(wall_time=13.0, step=4, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="a", simple_value=1.5),
            summary_pb2.Summary.Value(tag="b", simple_value=2.5)])),
    ]
    write_records(f, events)
    p = parse(f, "f")
    assert p.source.records == len(events) and p.source.problems == []
    assert points(p) == {"epoch_loss": [(0, 0.5), (1, 0.25), (2, 0.125)],
                         "lr": [(0, 1e-4), (1, 2e-4)], "a": [(4, 1.5)], "b": [(4, 2.5)]}
    assert by_tag(p)["epoch_loss"].wall_times.tolist() == [11.0, 1.7e9, 1.7e9]
    assert p.facts == {"tfevents_start_wall_time": 10.0, "tfevents_file_version": "brain.Event:2"}


def test_fast_and_protobuf_records_keep_file_order_per_tag(tmp_path):
    f = tmp_path / "ev"
    events = []
    for s in range(30):
        if s % 7 == 3:   # a record the fast path leaves to protobuf (two values)
            events.append(event_pb2.Event(wall_time=1.0, step=s, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="loss", simple_value=s),
                       summary_pb2.Summary.Value(tag="loss", simple_value=-s)])))
        else:
            events.append(scalar_event("loss", s, s))
    write_records(f, events)
    steps = by_tag(parse(f, "f", chunk_size=200))["loss"].steps.tolist()
    want = []
    for s in range(30):
        want += [s, s] if s % 7 == 3 else [s]
    assert steps == want


# ------------------------------------------------------------- damaged files
def test_empty_file(tmp_path):
    f = tmp_path / "events.out.tfevents.0"
    f.write_bytes(b"")
    p = parse(f, "f")
    assert p.source.records == 0 and p.series == [] and p.source.problems == ["empty file"]


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 13, 30, -5, -4, -1])
def test_truncated_final_record_keeps_complete_records(torch_file, tmp_path, cut):
    data = torch_file.read_bytes()
    starts = frame_starts(data)
    last = starts[-1]
    end = last + cut if cut > 0 else len(data) + cut
    f = tmp_path / "cut"
    f.write_bytes(data[:end])
    p = parse(f, "f", chunk_size=4096)
    assert p.source.problems == ["truncated final record"]
    assert p.source.records == len(starts) - 1
    full = points(parse(torch_file, "f"))
    got = points(p)
    assert sum(map(len, got.values())) == 599
    for tag, pts in got.items():
        assert pts == full[tag][:len(pts)]


def test_cut_at_a_record_boundary_is_not_a_problem(torch_file, tmp_path):
    data = torch_file.read_bytes()
    starts = frame_starts(data)
    f = tmp_path / "cut"
    f.write_bytes(data[:starts[100]])
    p = parse(f, "f")
    assert p.source.problems == [] and p.source.records == 100


def test_garbage_bytes(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "garbage"
    f.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    p = parse(f, "f")
    assert p.series == [] and p.source.records == 0
    assert p.source.problems == ["bad length CRC at byte offset 0"]


def test_garbage_after_good_records(torch_file, tmp_path):
    data = torch_file.read_bytes()
    f = tmp_path / "g"
    f.write_bytes(data + b"\x07" * 100)
    p = parse(f, "f")
    assert p.source.records == 601
    assert p.source.problems == [f"bad length CRC at byte offset {len(data)}"]
    assert sum(len(s.steps) for s in p.series) == 600


def test_absurd_length_stops_the_file(tmp_path):
    f = tmp_path / "ev"
    write_records(f, [scalar_event("loss", 1.0, s) for s in range(5)])
    end = f.stat().st_size
    header = struct.pack("<Q", 1 << 40)
    with open(f, "ab") as fh:
        fh.write(header + struct.pack("<I", masked_crc32c(header)) + b"\0" * 64)
    p = parse(f, "f")
    assert p.source.records == 5
    assert p.source.problems == [f"absurd record length {1 << 40} at byte offset {end}"]
    assert by_tag(p)["loss"].steps.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_bad_length_crc_stops_at_that_record(torch_file, tmp_path, chunk):
    data = bytearray(torch_file.read_bytes())
    starts = frame_starts(bytes(data))
    data[starts[250] + 9] ^= 0x40
    f = tmp_path / "bad"
    f.write_bytes(bytes(data))
    p = parse(f, "f", chunk_size=chunk)
    assert p.source.records == 250
    assert p.source.problems == [f"bad length CRC at byte offset {starts[250]}"]
    assert sum(len(s.steps) for s in p.series) == 249


def test_bad_data_crc_skips_the_record_only_when_checked(tmp_path):
    f = tmp_path / "ev"
    starts = write_records(f, [scalar_event("loss", float(s), s) for s in range(10)])
    data = bytearray(f.read_bytes())
    data[starts[4] + 20] ^= 0x01               # a byte inside the 5th record's data
    f.write_bytes(bytes(data))
    checked = parse(f, "f", verify_data_crc=True)
    assert checked.source.problems == ["1 records failed the data CRC check"]
    assert checked.source.records == 10
    assert by_tag(checked)["loss"].steps.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert parse(f, "f").source.problems == []      # default: length CRC only


def test_undecodable_record_is_counted_and_parsing_continues(tmp_path):
    f = tmp_path / "ev"
    write_records(f, [scalar_event("loss", 1.0, 0), b"\xff\xff\xff", b"\x0a\x05ab",
                      scalar_event("loss", 2.0, 1)])
    p = parse(f, "f")
    assert p.source.records == 4
    assert p.source.problems == ["2 records could not be decoded"]
    assert points(p) == {"loss": [(0, 1.0), (1, 2.0)]}


def test_record_larger_than_the_chunk(tmp_path):
    f = tmp_path / "ev"
    big = event_pb2.Event(wall_time=1.0, step=1, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="t" * 5000, simple_value=3.0)]))
    write_records(f, [scalar_event("loss", 1.0, 0), big, scalar_event("loss", 2.0, 2)])
    p = parse(f, "f", chunk_size=64)
    assert p.source.problems == [] and p.source.records == 3
    assert points(p) == {"loss": [(0, 1.0), (2, 2.0)], "t" * 5000: [(1, 3.0)]}


def test_missing_file_is_a_problem_not_an_exception(tmp_path):
    p = parse(tmp_path / "nope", "nope")
    assert p.source.records == 0 and p.source.problems[0].startswith("cannot open")


# ------------------------------------------------- fast path == protobuf path
_tags = hs.one_of(hs.sampled_from(["loss", "train/loss", "lr/unet", "é/ü", ""]),
                  hs.text(max_size=130))
_steps = hs.one_of(hs.integers(0, 3000), hs.integers(-2**63, 2**63 - 1))
_f32 = hs.floats(width=32, allow_nan=True, allow_infinity=True)
_f64 = hs.floats(allow_nan=True, allow_infinity=True)


@hs.composite
def _event(draw):
    kind = draw(hs.sampled_from(["simple"] * 6 + ["multi", "tensor", "meta", "version",
                                                  "empty", "raw"]))
    wall, step, tag = draw(_f64), draw(_steps), draw(_tags)
    if kind == "simple":
        return scalar_event(tag, draw(_f32), step, wall=wall)
    if kind == "multi":
        vals = [summary_pb2.Summary.Value(tag=draw(_tags), simple_value=draw(_f32))
                for _ in range(draw(hs.integers(0, 3)))]
        return event_pb2.Event(wall_time=wall, step=step,
                               summary=summary_pb2.Summary(value=vals))
    if kind == "tensor":
        return tensor_event(tag, draw(_f32), step, wall=wall,
                            plugin=draw(hs.sampled_from(["scalars", None, "text"])),
                            content=draw(hs.booleans()))
    if kind == "meta":
        ev = scalar_event(tag, draw(_f32), step, wall=wall)
        ev.summary.value[0].metadata.plugin_data.plugin_name = "scalars"
        return ev
    if kind == "version":
        return event_pb2.Event(wall_time=wall, file_version="brain.Event:2")
    if kind == "empty":
        return event_pb2.Event(wall_time=wall, step=step)
    # arbitrary bytes behind a valid frame: usually not an Event
    return draw(hs.binary(max_size=40))


def _same(a, b):
    assert a.source.records == b.source.records
    assert a.source.problems == b.source.problems
    sa, sb = by_tag(a), by_tag(b)
    assert list(sa) == list(sb)
    for tag in sa:
        assert sa[tag].steps.tolist() == sb[tag].steps.tolist()
        # bit-exact, NaN payloads included
        assert sa[tag].values.view(np.int64).tolist() == sb[tag].values.view(np.int64).tolist()
        assert (sa[tag].wall_times.view(np.int64).tolist()
                == sb[tag].wall_times.view(np.int64).tolist())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=hs.lists(_event(), max_size=40), chunk=hs.sampled_from([64, 300, 1 << 20]))
def test_fast_path_equals_protobuf_path(tmp_path, events, chunk):
    f = tmp_path / "ev"
    write_records(f, events)
    fast = parse(f, "f", chunk_size=chunk)
    slow = parse(f, "f", fast_path=False)
    _same(fast, slow)
    n_scalar = sum(1 for e in events if isinstance(e, event_pb2.Event)
                   and len(e.summary.value) == 1 and e.summary.value[0].HasField("simple_value"))
    assert sum(len(s.steps) for s in fast.series) >= n_scalar


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=hs.lists(_steps, min_size=1, max_size=300), tags=hs.lists(_tags, min_size=1,
       max_size=5, unique=True), vals=_f32)
def test_fast_path_on_long_regular_logs(tmp_path, steps, tags, vals):
    """Many same-shaped records: the predicted frame walk and the vectorised decode."""
    f = tmp_path / "ev"
    write_records(f, [scalar_event(tags[i % len(tags)], vals if i % 3 else float(i), s,
                                   wall=1.7e9 + i) for i, s in enumerate(steps)])
    _same(parse(f, "f", chunk_size=512), parse(f, "f", fast_path=False))


# --------------------------------------------------------------- wild runs
def test_wild_runs_match_event_accumulator():
    from tensorboard.backend.event_processing import event_accumulator as ea
    files = sorted(WILD.glob("**/events.out.tfevents.*")) if WILD.is_dir() else []
    if not files:
        pytest.skip("wild runs absent")
    for f in files:
        p = parse(f, f.name)
        assert p.source.problems == [], f
        acc = ea.EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        got = by_tag(p)
        assert sorted(got) == sorted(acc.Tags()["scalars"]), f
        for tag, s in got.items():
            ref = acc.Scalars(tag)
            assert s.steps.tolist() == [e.step for e in ref], (f, tag)
            assert np.array_equal(s.values, [e.value for e in ref], equal_nan=True), (f, tag)


def test_small_windows_read_the_same_points(torch_file, tmp_path):
    want = points(parse(torch_file, "f"))
    assert points(parse(torch_file, "f", chunk_size=100)) == want
    data = torch_file.read_bytes()
    f = tmp_path / "cut"
    f.write_bytes(data[:-3])
    p = parse(f, "f", chunk_size=100)
    assert p.source.problems == ["truncated final record"] and p.source.records == 600


def test_the_crc_table_is_tensorboards():
    """lorascope builds the CRC-32C table itself (tensorboard's import costs 0.1-0.2 s
    of every analysis): it must be TFRecord's."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import CRC_TABLE

    from lorascope.ingest import tfevents
    assert tfevents._CRC.tolist() == list(CRC_TABLE)
