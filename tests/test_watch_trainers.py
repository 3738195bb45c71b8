"""`lorascope watch` on real trainings: the project's tiny HF Trainer + PEFT and the
SummaryWriter-based kohya-style trainer run in a subprocess with an induced fault; watch
must report it within 2 s of the first logged point that shows it, and `--on-finding`
must be able to stop the trainer."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, fixture_run
from watchreplay import WatchProc, first_showing, wall_time_of

LATENCY = 2.0


def _trainer(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *cmd], cwd=str(cwd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_kohya_nan_is_reported_at_once_and_on_finding_stops_the_trainer(tmp_path):
    """kohya-style training (torch SummaryWriter) on a dataset holding one all-black
    image that the custom per-image normalization turns into NaN: the loss is NaN from
    the step that draws it.  watch reports loss.nonfinite within 2 s of that record and
    its --on-finding command (which reads the finding on stdin) kills the trainer."""
    src = fixture_run("sd-nan-degenerate")
    run = tmp_path / "run"
    run.mkdir()
    cfg = (src / "config.toml").read_text(encoding="utf-8")
    cfg = cfg.replace('"./models/base.safetensors"', json.dumps(str(src / "models/base.safetensors")))
    cfg = cfg.replace('train_data_dir = "./dataset"', f"train_data_dir = {json.dumps(str(src / 'dataset'))}")
    cfg = cfg.replace("max_train_epochs = 5", "max_train_epochs = 400")   # hours, unless stopped
    (run / "config.toml").write_text(cfg, encoding="utf-8")
    hook = tmp_path / "hook.json"
    # the watch first (as a user starts it beside the training), the trainer once it follows;
    # the hook kills the trainer through the pid file the test writes
    pid = tmp_path / "trainer.pid"
    w = WatchProc(run, "--interval", "0.5", "--idle-timeout", "10",
                  "--on-finding", f"cat > {hook}; kill -9 $(cat {pid})")
    assert w.ready.wait(60), w.summary()
    trainer = _trainer([str(ROOT / "tests/trainers/sd_train.py"), "config.toml"], run)
    pid.write_text(str(trainer.pid))
    try:
        ev = w.wait_for(lambda e: e["event"] == "appeared" and e["finding"]["rule"] == "loss.nonfinite",
                        timeout=120)
        assert ev is not None, w.summary()
        assert trainer.wait(timeout=30) == -signal.SIGKILL          # stopped by the hook
        rc = w.finish(timeout=60)
    finally:
        _stop(trainer)
        w.kill()
    step = ev["finding"]["step"]
    assert not ev["provisional"]
    # the first NaN point of the loss, as the trainer wrote it
    from lorascope.ingest import tfevents
    evfile = next(run.rglob("events.out.tfevents.*"))
    loss = next(r for r in tfevents.parse(evfile, "e").series if r.tag == "loss/current")
    first_nan = int(np.flatnonzero(~np.isfinite(loss.values))[0])
    assert step == int(loss.steps[first_nan])
    latency = ev["time"] - float(loss.wall_times[first_nan])
    print(f"kohya NaN at step {step}: reported {latency:.3f} s after the trainer wrote it")
    assert 0 <= latency < LATENCY, (latency, w.summary())
    # the hook got the finding as JSON on stdin
    got = json.loads(hook.read_text(encoding="utf-8"))
    assert got["finding"]["rule"] == "loss.nonfinite" and got["finding"]["step"] == step
    # killed long before its planned steps: the watch ends on the idle timeout, and the
    # final report (the run is over now) says the run stopped short, exit status 1
    final = w.events[-1]
    assert final["event"] == "final" and final["reason"] == "idle" and rc == 1
    rules = {f["rule"] for f in final["report"]["findings"]}
    assert {"loss.nonfinite", "run.incomplete"} <= rules
    assert final["report"]["run"]["steps"]["last"] < final["report"]["run"]["steps"]["planned"] / 10


@pytest.mark.slow
def test_hf_trainer_stuck_loss_is_confirmed_and_stops_the_trainer(tmp_path):
    """HF Trainer + PEFT with a learning rate typed as 1e20 (for 1e-4, sign lost): the
    first update saturates the adapter and the loss stays at ln(vocab) from step 2 on.
    watch shows loss.plateau within 2 s of the first point from which the run's prefix
    shows it (provisional on a young curve), confirms it within 2 s of the point that
    makes it firm, and only then fires --on-finding, which stops the trainer."""
    base = ROOT / "fixtures" / "models" / "tiny-llama"
    if not (base / "model.safetensors").is_file():
        pytest.skip("fixtures/models/tiny-llama not generated")
    run = tmp_path / "run"
    run.mkdir()
    sys.path.insert(0, str(ROOT / "fixtures"))
    import tinyllm as T
    T.write_json(run / "data/train.json", T.make_records(300, 1))
    spec = dict(run_dir=str(run), base_model=str(base), train_file="data/train.json",
                learning_rate=1e20, max_steps=3000, max_grad_norm=0.0, lr_scheduler_type="constant",
                seed=1, save_steps=None)
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    pid = tmp_path / "trainer.pid"
    w = WatchProc(run, "--interval", "0.5", "--idle-timeout", "10",
                  "--on-finding", f"kill -9 $(cat {pid})")
    assert w.ready.wait(60), w.summary()
    trainer = _trainer([str(ROOT / "fixtures/tinyllm.py"), str(tmp_path / "spec.json")], run)
    pid.write_text(str(trainer.pid))
    def plateau(e, firm=False):
        return e["event"] in ("appeared", "confirmed") and e["finding"]["rule"] == "loss.plateau" \
            and not (firm and e["provisional"])
    try:
        firm_ev = w.wait_for(lambda e: plateau(e, firm=True), timeout=180)
        assert firm_ev is not None, w.summary()
        assert trainer.wait(timeout=30) == -signal.SIGKILL
        rc = w.finish(timeout=60)
    finally:
        _stop(trainer)
        w.kill()
    first_ev = next(e for e in w.events if plateau(e))
    first = first_showing(run, "loss.plateau")
    firm = first_showing(run, "loss.plateau", firm=True)
    assert first is not None and firm is not None and first < firm
    for ev, step in ((first_ev, first), (firm_ev, firm)):
        latency = ev["time"] - wall_time_of(run, "train/loss", step)
        print(f"HF plateau {ev['event']} ({'provisional' if ev['provisional'] else 'firm'}) at step "
              f"{step}: {latency:.3f} s after the trainer wrote it")
        assert 0 <= latency < LATENCY, (ev["event"], step, latency, w.summary())
    if first_ev is not firm_ev:                 # shown while young, then confirmed
        assert first_ev["provisional"] and "fewer than" in first_ev["provisional_why"]
        assert firm_ev["event"] == "confirmed"
    # --on-finding fired on the firm finding only: nothing killed the trainer before it
    assert not any(e["event"] == "withdrawn" for e in w.events)
    final = w.events[-1]
    assert final["event"] == "final" and rc == 1
    st = final["report"]["run"]["steps"]
    assert st["planned"] == 3000 and firm <= st["last"] < 300
    assert any(f["rule"] == "loss.plateau" and f["severity"] == "critical" for f in final["report"]["findings"])
    assert math.isfinite(final["time"])
