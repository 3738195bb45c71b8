"""`lorascope watch`: following a run as it grows (fixture runs written again record by
record), finding identity and withdrawal, the end of a run, Ctrl-C, the reports."""
from __future__ import annotations

import io
import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from helpers import fixture_run, lorascope
from lorascope.model import Finding
from lorascope.watch import Options, Watch
from lorascope.watch.follow import RunFollower
from lorascope.watch.live import WITHDRAW_AFTER, YOUNG_POINTS, Tracker, live_findings
from watchreplay import Replay, WatchProc, first_showing


def _analyze_doc(run_dir: Path) -> dict:
    r = lorascope("analyze", run_dir, "--format", "json", "--no-html")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- a finished run: watch ends by itself with analyze's report ----------------------------

@pytest.mark.parametrize("name,reason", [("hf-lr-diverge", "finished"), ("sd-lr-spike", "finished"),
                                         ("lf-healthy", "finished"), ("hf-killed", "idle")])
def test_watch_on_a_finished_run_ends_with_analyzes_report(tmp_path, name, reason):
    run = tmp_path / name
    shutil.copytree(fixture_run(name), run)
    t0 = time.time()
    r = lorascope("watch", run, "--format", "json", "--interval", "0.2", "--idle-timeout", "2")
    assert time.time() - t0 < 30
    evs = _events(r.stdout)
    final = evs[-1]
    assert final["event"] == "final" and final["reason"] == reason, final["detail"]
    want = _analyze_doc(run)
    assert final["report"] == want
    assert r.returncode == final["exit_status"] == (1 if any(
        f["severity"] == "critical" for f in want["findings"]) else 0)
    # every finding of the report was shown once as it appeared
    shown = [e["finding"]["rule"] for e in evs if e["event"] == "appeared"]
    assert sorted(shown) == sorted(f["rule"] for f in want["findings"])


def test_end_marks(tmp_path):
    """hf: the trainer's summary entry; kohya: "model saved."; LLaMA-Factory:
    all_results.json; a run killed without a word: the idle timeout."""
    for name, what in [("hf-lr-diverge", "end-of-training line"), ("sd-healthy", "end-of-training line"),
                       ("lf-healthy", "")]:
        r = lorascope("watch", fixture_run(name), "--format", "json", "--interval", "0.2")
        final = _events(r.stdout)[-1]
        assert final["reason"] == "finished" and what in final["detail"], final["detail"]


# -- a growing run -----------------------------------------------------------------------

def _drive(run_dir: Path, replay: Replay, batches: int, out: io.StringIO, fmt: str = "json") -> Watch:
    """The watch's own steps (read what is new, analyse, print), once per batch of
    records the replay writes: the same sequence as its loop, without its timing."""
    w = Watch(Options(run_dir=run_dir, fmt=fmt), out=out, err=io.StringIO())
    replay.start_tree()
    datas = {e: e.read_bytes() for e in replay.events}
    from watchreplay import frames
    ends = {e: frames(d) for e, d in datas.items()}
    n = max(len(v) for v in ends.values())
    for k in range(1, batches + 1):
        for e in replay.events:
            fr = ends[e]
            upto = fr[min(len(fr), n * k // batches) - 1]
            dst = run_dir / e.relative_to(replay.src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(datas[e][:upto] + datas[e][upto:upto + 9])   # and a cut record
        w.follower.walk()
        if w.follower.poll(False):
            w._live()
    return w


def test_a_blip_that_recovers_is_withdrawn(tmp_path):
    """sd-lr-spike: the loss jumps at step ~116 and comes down.  While the jump is the
    end of the curve it is a climb that stays up (loss.divergence); once the loss came
    back it is a spike: the divergence is shown as withdrawn, not silently dropped."""
    src = fixture_run("sd-lr-spike")
    run = tmp_path / "run"
    out = io.StringIO()
    w = _drive(run, Replay(src, run), 26, out)
    evs = _events(out.getvalue())
    div = [e for e in evs if e["finding"]["rule"] == "loss.divergence"]
    kinds = [e["event"] for e in div]
    assert kinds.count("appeared") >= 1 and kinds.count("appeared") == kinds.count("withdrawn")
    assert kinds.index("withdrawn") > 0                  # each shown first, withdrawn later
    spike = next(e for e in evs if e["finding"]["rule"] == "loss.spike")
    assert spike["event"] == "appeared"
    assert div[0]["at_step"] < spike["at_step"] <= max(e["at_step"] for e in div if e["event"] == "withdrawn")
    assert 110 <= spike["finding"]["step"] <= 120
    # a record cut at the live end of the event file is never a problem
    assert w.analysis is not None
    assert not [p for s in w.analysis.run.sources for p in s.problems if "truncated" in p]


def test_findings_appear_no_later_than_their_prefix_shows_them(tmp_path):
    """Each finding of a growing run is printed by the first analysis whose points
    show it (every batch of records is analysed here)."""
    src = fixture_run("sd-lr-spike")
    run = tmp_path / "run"
    out = io.StringIO()
    _drive(run, Replay(src, run), 60, out)
    spike = next(e for e in _events(out.getvalue())
                 if e["event"] == "appeared" and e["finding"]["rule"] == "loss.nonfinite"
                 or e["finding"]["rule"] in ("loss.spike", "loss.divergence"))
    first = min(s for s in (first_showing(src, "loss.spike"), first_showing(src, "loss.divergence"))
                if s is not None)
    per_batch = 315 / 60 + 1
    assert first <= spike["at_step"] <= first + per_batch


@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_growing_run_through_the_command(tmp_path, mode):
    """The command itself, following a run written record by record (with records cut
    at the live end), with the file system's change notifications (inotify here) or by
    polling (--poll), ends by itself when the trainer's log says "model saved.", with
    the report analyze gives on the finished folder."""
    src = fixture_run("sd-lr-spike")
    run = tmp_path / "run"
    run.mkdir()
    w = WatchProc(run, "--interval", "0.3", "--idle-timeout", "60", *(["--poll"] if mode == "poll" else []))
    try:
        assert w.ready.wait(60), w.summary()
        how = w.stderr.split("lorascope watch: following", 1)[1].splitlines()[0]
        if mode == "poll":
            assert "polling every 0.3 s" in how, how
        else:
            assert "inotify notifications" in how, how
        rep = Replay(src, run, batch=40, pause=0.1).start()
        rep.done.wait(120)
        rc = w.finish(timeout=60)
    finally:
        w.kill()
    final = w.events[-1]
    assert final["event"] == "final" and final["reason"] == "finished", w.summary()
    assert final["report"] == _analyze_doc(run)
    assert rc == 1
    seen = [e for e in w.events[:-1] if e["event"] == "appeared"]
    assert any(e["finding"]["rule"] == "loss.spike" and e["at_step"] < 300 for e in seen), w.summary()


def test_ctrl_c_reports_the_run_so_far(tmp_path):
    """Ctrl-C on a live run: the report on the run so far, a cut record at the end of the
    event file is not a problem and run.incomplete is held back (the run goes on);
    analyze on the same folder, which judges it as a finished run, says both."""
    src = fixture_run("sd-lr-spike")
    run = tmp_path / "run"
    run.mkdir()
    rep = Replay(src, run, batch=200, pause=0)
    rep.start_tree()
    rep.grow(limit=600)                          # about 150 steps of 315
    ev = next(run.rglob("events.out.tfevents.*"))
    with open(ev, "ab") as fh:
        fh.write(b"\x2a\x00\x00\x00\x00\x00\x00\x00\x01")    # a record being written
    html = tmp_path / "live" / "report.html"
    w = WatchProc(run, "--interval", "0.2", "--idle-timeout", "600", "--fail-on", "warning",
                  "--html", str(html))
    try:
        assert w.ready.wait(60), w.summary()
        assert w.wait_for(lambda e: e["event"] == "appeared" and e["finding"]["rule"] == "loss.spike", 60)
        # the live report is written as findings appear, before the run ends
        t_end = time.time() + 30
        while time.time() < t_end and not (html.is_file() and "loss.spike" in html.read_text("utf-8")):
            time.sleep(0.05)
        assert "loss.spike" in html.read_text("utf-8")
        assert "run.incomplete" not in html.read_text("utf-8")
        w.proc.send_signal(signal.SIGINT)
        rc = w.finish(timeout=60)
    finally:
        w.kill()
    final = w.events[-1]
    assert final["event"] == "final" and final["reason"] == "interrupted"
    rules = {f["rule"] for f in final["report"]["findings"]}
    assert "run.incomplete" not in rules and "loss.spike" in rules
    probs = [p for s in final["report"]["run"]["sources"] for p in s["problems"]]
    assert not [p for p in probs if "truncated" in p]
    assert rc == final["exit_status"] == 1
    post = _analyze_doc(run)
    assert "run.incomplete" in {f["rule"] for f in post["findings"]}
    assert any("truncated final record" in p for s in post["run"]["sources"] for p in s["problems"])


def test_text_output(tmp_path):
    run = tmp_path / "run"
    out = io.StringIO()
    _drive(run, Replay(fixture_run("sd-lr-spike"), run), 12, out, fmt="text")
    text = out.getvalue()
    assert "✗ critical [loss.spike] @ step" in text
    assert "withdrawn" in text and "no longer found in the run so far" in text
    assert "\x1b" not in text


def test_strings_from_the_data_are_shown_escaped(tmp_path):
    """A config value holding terminal escapes reaches a finding's title: the watch's
    lines show it escaped, as analyze does."""
    run = tmp_path / "run"
    shutil.copytree(fixture_run("hf-lr-diverge"), run)
    cfg = run / "train_config.yaml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(
        "model_name_or_path: ../../models/tiny-llama",
        'model_name_or_path: "/nowhere/\\e]0;owned\\a\\e[2Jmodel"'), encoding="utf-8")
    r = lorascope("watch", run, "--interval", "0.2")
    assert "config.missing_path" in r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2Jmodel" in r.stdout


# -- identity, withdrawal, provisional ----------------------------------------------------------

def _f(rule, step, sev="critical", files=()):
    return Finding(rule=rule, severity=sev, title=f"{rule} at {step}", step=step, files=list(files))


def test_identity_and_withdrawal():
    t = Tracker()

    def tol(f):
        return 10
    ch = t.update([_f("loss.spike", 100), _f("config.lr_high", None, "warning")], {}, tol)
    assert [(c.kind, c.item.rule) for c in ch] == [("appeared", "loss.spike"), ("appeared", "config.lr_high")]
    # the onset moved by less than the tolerance: the same finding, nothing printed
    assert t.update([_f("loss.spike", 106), _f("config.lr_high", None, "warning")], {}, tol) == []
    # another episode of the same rule far away: a new finding
    ch = t.update([_f("loss.spike", 106), _f("loss.spike", 300), _f("config.lr_high", None, "warning")],
                  {}, tol)
    assert [(c.kind, c.item.step) for c in ch] == [("appeared", 300)]
    # gone from one analysis: kept; from WITHDRAW_AFTER in a row: withdrawn
    for k in range(WITHDRAW_AFTER - 1):
        assert t.update([_f("loss.spike", 300), _f("config.lr_high", None, "warning")], {}, tol) == []
    ch = t.update([_f("loss.spike", 300), _f("config.lr_high", None, "warning")], {}, tol)
    assert [(c.kind, c.item.step) for c in ch] == [("withdrawn", 106)]
    # a severity that rises is shown again; a provisional finding that becomes firm is confirmed
    ch = t.update([_f("loss.spike", 300), _f("config.lr_high", None, "critical")], {}, tol)
    assert [(c.kind, c.escalated_from) for c in ch] == [("appeared", "warning")]
    rest = [_f("loss.spike", 300), _f("config.lr_high", None, "critical")]
    f = _f("loss.plateau", 1)
    t.update([f] + rest, {id(f): "young"}, tol)
    g = _f("loss.plateau", 1)
    ch = t.update([g] + rest, {}, tol)
    assert [c.kind for c in ch] == ["confirmed"]
    # the final analysis withdraws at once
    ch = t.update([], {}, tol, final=True)
    assert sorted(c.kind for c in ch) == ["withdrawn"] * 3


def test_live_policy():
    from lorascope.build import build_run
    run = build_run(fixture_run("hf-lr-diverge"))
    fs = [_f("run.incomplete", 50, "warning"), _f("overfit", 40, "warning"), _f("loss.divergence", 30),
          _f("loss.nonfinite", 20)]
    shown, prov = live_findings(fs, run)
    assert [f.rule for f in shown] == ["overfit", "loss.divergence", "loss.nonfinite"]
    assert set(prov) == {id(fs[1])}          # 100 points: the divergence is firm
    from dataclasses import replace
    young = replace(run, series=tuple(replace(s, steps=s.steps[:YOUNG_POINTS - 1],
                                              values=s.values[:YOUNG_POINTS - 1]) for s in run.series))
    shown, prov = live_findings(fs, young)
    assert set(prov) == {id(fs[1]), id(fs[2])}    # a young curve: its shape is provisional, a NaN is not


# -- following files ------------------------------------------------------------------------

def test_state_being_written_is_not_a_problem_and_a_replaced_file_is_read_anew(tmp_path):
    src = fixture_run("hf-lr-diverge")
    run = tmp_path / "run"
    run.mkdir()
    state = (src / "trainer_state.json").read_text(encoding="utf-8")
    (run / "trainer_state.json").write_text(state[: len(state) // 2], encoding="utf-8")
    f = RunFollower(run)
    f.walk()
    f.poll(False)
    assert f.pieces(False)[0] == []           # fresh and cut: being written, tried again later
    (run / "trainer_state.json").write_text(state, encoding="utf-8")
    assert f.poll(False)
    p = f.pieces(False)[0][0]
    assert p.source.problems == [] and p.facts["state_global_step"] == 100
    # an event file cut to nothing and written again (a trainer restarted into it)
    ev = next(src.rglob("events.out.tfevents.*"))
    dst = run / ev.name
    dst.write_bytes(ev.read_bytes())
    f.walk()
    f.poll(False)
    n = next(q for q in f.pieces(False)[0] if q.source.kind == "tfevents").source.records
    dst.write_bytes(ev.read_bytes()[:200])
    f.poll(False)
    m = next(q for q in f.pieces(False)[0] if q.source.kind == "tfevents").source.records
    assert 0 < m < n


# -- the command's errors -------------------------------------------------------------------

def test_html_report_kept_current_and_never_inside_the_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fixture_run("hf-lr-diverge"), run)
    html = tmp_path / "out" / "live.html"
    r = lorascope("watch", run, "--html", html, "--interval", "0.2")
    assert r.returncode == 1 and html.is_file()
    page = html.read_text(encoding="utf-8")
    assert "loss.divergence" in page
    assert f"report: {html}" in r.stdout
    bad = lorascope("watch", run, "--html", run / "r.html")
    assert bad.returncode == 2 and "inside the run directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_errors_are_one_line(tmp_path):
    r = lorascope("watch", tmp_path / "never", "--idle-timeout", "1", "--interval", "0.1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nothing readable" in r.stderr
    bad = tmp_path / "rules.toml"
    bad.write_text("[[[", encoding="utf-8")
    r = lorascope("watch", fixture_run("hf-lr-diverge"), "--rules", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
