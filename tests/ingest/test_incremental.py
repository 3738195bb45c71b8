"""Incremental reading (``lorascope watch``): a file read piece by piece as its writer
appends to it gives exactly what one read of the finished file gives, every byte is
decoded once, and a record or line cut at the live end waits for the next read instead
of being a problem."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from helpers import fixture_run
from lorascope.ingest import _lines, llamafactory, textlog, tfevents


def _grow(src: Path, dst: Path, seed: int, pieces: int = 12):
    """Append src's bytes to dst in random-sized pieces (cutting records and lines
    anywhere), yielding after each piece."""
    data = src.read_bytes()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    dst.write_bytes(b"")
    last = 0
    for c in cuts + [len(data)]:
        with open(dst, "ab") as fh:
            fh.write(data[last:c])
        last = c
        yield c == len(data)


def _series(parsed) -> dict:
    return {r.tag: (r.steps.tolist(), r.values.tolist(),
                    None if r.wall_times is None else r.wall_times.tolist(),
                    None if r.positions is None else r.positions.tolist()) for r in parsed.series}


def _event_file(name: str) -> Path:
    return next(fixture_run(name).rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", ["sd-lr-spike", "hf-lr-diverge"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tfevents_read_as_it_grows_equals_one_read(tmp_path, monkeypatch, name, seed):
    src = _event_file(name)
    whole = tfevents.parse(src, "ev")
    decoded = []
    real = tfevents._decode_chunk

    def counting(v, buf, starts, lens, st, *a):
        decoded.append(len(starts))
        return real(v, buf, starts, lens, st, *a)
    monkeypatch.setattr(tfevents, "_decode_chunk", counting)
    dst = tmp_path / src.name
    r = tfevents.Reader("ev", chunk_size=4096)
    for done in _grow(src, dst, seed):
        r.read(dst)
        live = r.parsed(final=False)
        # a record cut at the live end is not a problem while the file grows
        assert live.source.problems == []
        assert r.offset <= dst.stat().st_size
        if not done:
            assert live.source.records <= whole.source.records
    final = r.parsed(final=True)
    assert final.source.records == whole.source.records
    assert sum(decoded) == whole.source.records          # every record decoded once
    assert _series(final) == _series(whole)
    assert final.facts == whole.facts
    assert final.source.problems == whole.source.problems == []


def test_tfevents_cut_record_is_a_problem_only_when_final(tmp_path):
    src = _event_file("sd-lr-spike")
    data = src.read_bytes()
    dst = tmp_path / "events.out.tfevents.1"
    dst.write_bytes(data[:-7])                       # the last record cut mid-write
    r = tfevents.Reader("ev")
    r.read(dst)
    assert r.pending and r.parsed(final=False).source.problems == []
    assert r.parsed(final=True).source.problems == ["truncated final record"]
    assert tfevents.parse(dst, "ev").source.problems == ["truncated final record"]
    with open(dst, "ab") as fh:                      # the writer finishes the record
        fh.write(data[-7:])
    assert r.read(dst)
    assert not r.pending and r.parsed(final=True).source.problems == []


def test_tfevents_corruption_stops_the_reader_for_good(tmp_path):
    src = _event_file("sd-lr-spike")
    data = bytearray(src.read_bytes())
    dst = tmp_path / "events.out.tfevents.1"
    half = len(data) // 2
    dst.write_bytes(bytes(data[:half]))
    r = tfevents.Reader("ev")
    r.read(dst)
    n = r.st.records
    with open(dst, "r+b") as fh:                     # the next frame's header smashed
        fh.seek(r.offset)
        fh.write(b"\xff" * 12 + bytes(data[r.offset + 12:]))
    r.read(dst)
    assert r.broken and "length" in r.broken
    assert not r.read(dst) and r.st.records >= n
    assert r.broken in r.parsed(final=False).source.problems


def _lines_of(path: Path) -> list:
    return list(_lines.iter_lines(path, max_line=50))


def test_line_tail_gives_the_lines_of_one_read(tmp_path):
    text = ("\ufeffBOM first line\r\n" + "x" * 300 + "\n\nshort\r\n"
            + "ünïcödé " * 20 + "\nno newline at the end").encode("utf-8")
    src = tmp_path / "src.log"
    src.write_bytes(text)
    whole = _lines_of(src)
    for seed in range(5):
        dst = tmp_path / f"g{seed}.log"
        tail = _lines.LineTail(max_line=50)
        got = []
        for done in _grow(src, dst, seed, pieces=40):
            got += list(tail.read(dst, final=False))
            # only ended lines: the unterminated last line waits
            assert all(not t.startswith("no newline") for _, t, _ in got)
        got += list(tail.read(dst, final=True))
        assert got == whole


def test_trainer_log_read_as_it_grows(tmp_path):
    src = fixture_run("lf-healthy") / "trainer_log.jsonl"
    whole = llamafactory.parse(src, "trainer_log.jsonl")
    dst = tmp_path / "trainer_log.jsonl"
    r = llamafactory.Reader("trainer_log.jsonl")
    for _ in _grow(src, dst, 3, pieces=30):
        r.read(dst)
        # a line cut mid-write is never a "not a JSON object" problem
        assert r.parsed().source.problems in ([], ["empty file"])
    r.read(dst, final=True)
    final = r.parsed()
    assert _series(final) == _series(whole)
    assert final.facts == whole.facts and final.source.records == whole.source.records


@pytest.mark.parametrize("run,log", [("lf-healthy", "running_log.txt"), ("hf-lr-diverge", "train.log"),
                                     ("sd-healthy", "train.log")])
def test_text_log_read_as_it_grows(tmp_path, run, log):
    src = fixture_run(run) / log
    whole = textlog.parse(src, log)
    dst = tmp_path / log
    r = textlog.Reader(log)
    for _ in _grow(src, dst, 5, pieces=25):
        r.read(dst)
        snap = r.parsed(final=False)
        assert len(snap.events) <= len(whole.events)
    r.read(dst, final=True)
    final = r.parsed(final=True)
    assert _series(final) == _series(whole)
    assert [(e.kind, e.line, e.text) for e in final.events] == [(e.kind, e.line, e.text) for e in whole.events]
    assert final.facts == whole.facts and final.config == whole.config


def test_trainers_end_lines_are_facts():
    hf = textlog.parse(fixture_run("hf-lr-diverge") / "train.log", "train.log")
    assert hf.facts.get("training_finished")
    sd = textlog.parse(fixture_run("sd-healthy") / "train.log", "train.log")
    assert sd.facts.get("training_finished")
    killed = textlog.parse(fixture_run("hf-killed") / "train.log", "train.log")
    assert "training_finished" not in killed.facts


def test_snapshot_does_not_pin_the_growing_columns(tmp_path):
    """A snapshot's arrays are copies: reading on after it (the columns grow) works and
    leaves the snapshot as it was."""
    src = fixture_run("lf-healthy") / "trainer_log.jsonl"
    dst = tmp_path / "trainer_log.jsonl"
    r = llamafactory.Reader("t")
    snaps = []
    for _ in _grow(src, dst, 9, pieces=5):
        r.read(dst)
        snaps.append(r.parsed())
    lens = [len(next((s for s in p.series if s.tag == "loss"), np.zeros(0)).steps)
            if any(s.tag == "loss" for s in p.series) else 0 for p in snaps]
    assert lens == sorted(lens) and lens[-1] > lens[0]
