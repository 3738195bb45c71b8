"""Hostile tracker files: W&B record logs, MLflow stores and ai-toolkit loss logs that
are cut short, garbage, absurdly long or nested without end.  Each parser returns (a
problem, never a traceback) in bounded time and memory, and `analyze` exits 0 or 2."""
from __future__ import annotations

import json
import sqlite3
import struct
import zlib

import numpy as np
import pytest

import wandblog as WL
from helpers import lorascope
from hostile.fuzzing import harness
from lorascope.ingest import aitk, mlflow, wandb

pytestmark = pytest.mark.timeout(120)


def _log(tmp_path, records, name="run-h.wandb"):
    return WL.write(tmp_path / name, records)


def _rows(n=50):
    return [WL.history(i + 1, [WL.item("loss", repr(1 / (i + 1))), WL.item("_step", str(i))], i)
            for i in range(n)]


def test_wandb_every_truncation_point(tmp_path):
    f = _log(tmp_path, _rows(30) + [WL.history(99, [WL.item("pad", json.dumps("x" * 70000))], 31)])
    data = f.read_bytes()
    p = tmp_path / "run-t.wandb"
    for cut in list(range(0, 64)) + list(range(64, len(data), 997)):
        p.write_bytes(data[:cut])
        parsed = wandb.parse(p, p.name)
        harness._check_parsed(parsed)
        if 7 <= cut < len(data):
            loss = [s for s in parsed.series if s.tag == "loss"]
            if loss:
                assert loss[0].steps.tolist() == list(range(len(loss[0].steps)))


def test_wandb_absurd_chunk_lengths_and_types(tmp_path):
    data = bytearray(_log(tmp_path, _rows(40)).read_bytes())
    for off, patch in ((7 + 4, b"\xff\xff"), (7 + 6, b"\x09"), (7 + 6, b"\x03"), (7, b"\0" * 7)):
        bad = bytearray(data)
        bad[off:off + len(patch)] = patch
        p = tmp_path / "run-a.wandb"
        p.write_bytes(bytes(bad))
        parsed = wandb.parse(p, p.name)
        harness._check_parsed(parsed)
        assert parsed.source.problems


def _with_crc(chunk_data: bytes, t: int = 1) -> bytes:
    crc = zlib.crc32(chunk_data, zlib.crc32(bytes([t]))) & 0xFFFFFFFF
    return struct.pack("<IHB", crc, len(chunk_data), t) + chunk_data


def test_wandb_records_that_lie_about_their_lengths(tmp_path):
    """Valid framing and CRC around protobuf whose varint lengths point past the end, a
    10-byte varint, an unterminated varint, unknown wire types."""
    bodies = [WL.field(1, 1) + b"\x12\xff\xff\xff\xff\x0f" + b"\x0a" * 20,
              b"\x12\x05\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
              b"\x12\x03\x0a\x81\x81",
              b"\x12\x04\x0b\x0c\x0d\x0e",
              b"\x08" + b"\xff" * 12]
    out = struct.pack("<4sHB", b":W&B", 0xBEE1, 0) + b"".join(_with_crc(b) for b in bodies)
    p = tmp_path / "run-l.wandb"
    p.write_bytes(out)
    parsed = wandb.parse(p, p.name)
    harness._check_parsed(parsed)
    assert any("decoded" in pr for pr in parsed.source.problems)
    assert not parsed.series


def test_wandb_huge_values_and_deep_nesting(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    recs = [WL.config_record(1, [WL.item("learning_rate", deep, nested=False),
                                 WL.item(["a"] * 5000, "1"),
                                 WL.item("per_device_train_batch_size", "4", nested=False)]),
            WL.history(2, [WL.item("loss", "9" * 60000), WL.item("x" * 60000, "1.5"),
                           WL.item(["n"] * 10000, "2.5"), WL.item("_step", "0")], 0),
            WL.output(3, "y" * 2_000_000 + "\n")]
    f = _log(tmp_path, recs)
    parsed = wandb.parse(f, f.name)
    harness._check_parsed(parsed)
    s = {x.tag: x for x in parsed.series}
    assert "loss" not in s              # 60,000 digits: not a number Python's json reads
    assert s["x" * 60000].values.tolist() == [1.5]
    assert s[".".join(["n"] * 10000)].values.tolist() == [2.5]


def test_mlflow_hostile_store(tmp_path):
    r = tmp_path / "mlruns" / "1" / "abc"
    (r / "metrics").mkdir(parents=True)
    (r / "metrics" / "loss").write_bytes(b"1 0.5 1\n" + b"9" * 5_000_000 + b"\n2 0.25 2\n"
                                         + b"3 0.1 " + b"9" * 400 + b"\n\xff\xfe\x00\n")
    deep = r / "metrics"
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "k").write_bytes(b"1 1 1\n")
    (r / "params").mkdir()
    (r / "params" / "x").write_text("[" * 200_000)
    (r / "params" / "learning_rate").write_text("1e999")
    (r / "meta.yaml").write_text("a: &a [*a, *a]\n" * 3 + "status: [1, 2]\n")
    parsed = mlflow.parse(r / "meta.yaml", "mlruns/1/abc/meta.yaml")
    harness._check_parsed(parsed)
    (s,) = [x for x in parsed.series if x.tag == "loss"]
    assert s.steps.tolist() == [1, 2]
    assert any("lines are not" in pr for pr in parsed.source.problems)
    assert not any(c.key == "learning_rate" for c in parsed.config)


def test_aitk_hostile_databases(tmp_path):
    p = tmp_path / "loss_log.db"
    for data in (b"", b"SQLite format 3\0" + b"\xff" * 200, b"garbage" * 1000):
        p.write_bytes(data)
        harness._check_parsed(aitk.parse(p, "loss_log.db"))
    p.unlink()
    con = sqlite3.connect(str(p))
    con.execute("CREATE TABLE metrics (step, key, value_real, value_text)")
    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", [
        (1, "loss/loss", 0.5, None), ("two", "loss/loss", 0.4, None), (2 ** 63 - 1, "loss/loss", 1.0, None),
        (3, "loss/loss", "text", "text"), (4, "loss/loss", None, None), (5, b"\xff", 1.0, None),
        (6, "k" * 100_000, 1.0, None)])
    con.commit()
    con.close()
    before = sorted(x.name for x in tmp_path.iterdir())
    parsed = aitk.parse(p, "loss_log.db")
    harness._check_parsed(parsed)
    assert sorted(x.name for x in tmp_path.iterdir()) == before          # nothing written beside it
    s = {x.tag: x for x in parsed.series}
    assert s["loss/loss"].steps.tolist() == [1, 4] and np.isnan(s["loss/loss"].values[1])


def test_analyze_hostile_wandb_folder(tmp_path):
    """A wandb/ folder with a latest-run link, a link loop, garbage and an empty record
    log: one line, exit 0 or 2, never a traceback."""
    run = tmp_path / "proj"
    d = run / "wandb" / "offline-run-20250101_000000-aaa"
    (d / "files").mkdir(parents=True)
    WL.write(d / "run-aaa.wandb", _rows(30))
    (run / "wandb" / "latest-run").symlink_to(d, target_is_directory=True)
    (d / "files" / "loop").symlink_to(run, target_is_directory=True)
    (d / "files" / "config.yaml").write_bytes(b"\xff\xfe: [unclosed\n")
    (d / "files" / "wandb-summary.json").write_bytes(b"[" * 100_000)
    (run / "wandb" / "offline-run-x" ).mkdir()
    (run / "wandb" / "offline-run-x" / "run-x.wandb").write_bytes(b"")
    r = lorascope("analyze", run, "--no-html", "--fail-on", "never", "--format", "json", subprocess_=True)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    paths = [s["path"] for s in doc["run"]["sources"]]
    assert not any("latest-run" in p for p in paths)
    assert any(p.endswith("run-aaa.wandb") for p in paths)
