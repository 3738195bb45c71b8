"""Planning: diagnosis choice, checkpoint before onset, replay window (no torch)."""
from __future__ import annotations

from pathlib import Path

import sys

import pytest

from helpers import fixture_run, lorascope
from lorascope.model import Finding
from lorascope.rerun.plan import (CheckpointRef, RerunError, check_window, choose_checkpoint,
                                  choose_diagnosis, find_checkpoints, make_plan, replay_end)


def _ck(tmp: Path, step: int, adapter: bool = True) -> Path:
    d = tmp / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if adapter:
        (d / "adapter_model.safetensors").write_bytes(b"")
        (d / "adapter_config.json").write_text("{}")
    return d


def test_picks_most_severe_step_bound_finding_with_fix():
    fs = [Finding("config.lr_high", "warning", "t", fix={"learning_rate": 2e-4}),
          Finding("loss.oscillation", "warning", "t", step=5, fix={"learning_rate": 1e-4}),
          Finding("loss.spike", "critical", "t", step=50, step_range=[50, 90],
                  fix={"learning_rate": 1e-4, "max_grad_norm": 1.0}),
          Finding("overfit", "warning", "t", step=3)]
    assert choose_diagnosis(fs).rule == "loss.spike"
    assert choose_diagnosis(fs, "loss.oscillation").rule == "loss.oscillation"


def test_diagnosis_errors_are_one_line_reasons():
    with pytest.raises(RerunError, match="no diagnosis with a fix"):
        choose_diagnosis([Finding("overfit", "warning", "t", step=3)])
    with pytest.raises(RerunError, match="not tied to a step"):
        choose_diagnosis([Finding("config.lr_high", "warning", "t", fix={"learning_rate": 1})],
                         "config.lr_high")
    with pytest.raises(RerunError, match="no such finding"):
        choose_diagnosis([], "loss.spike")


def test_checkpoint_strictly_before_onset(tmp_path):
    for s in (10, 20, 30):
        _ck(tmp_path, s)
    _ck(tmp_path, 15, adapter=False)           # no adapter: not usable
    cks = find_checkpoints(tmp_path)
    assert [c.step for c in cks] == [10, 20, 30]
    assert choose_checkpoint(cks, onset=30, from_step=None).step == 20
    assert choose_checkpoint(cks, onset=10, from_step=None) is None      # from scratch
    assert choose_checkpoint(cks, onset=30, from_step=25).step == 20
    with pytest.raises(RerunError, match="no checkpoint at or before"):
        choose_checkpoint(cks, onset=30, from_step=5)


def test_window_covers_symptom_plus_margin():
    # symptom 100-200 resumed at 80: 20% of 120 steps = 24 more
    assert replay_end(80, 100, 200, steps=None, logging_steps=1, planned=None) == 224
    # at least 5 logging intervals of margin
    assert replay_end(80, 100, 110, steps=None, logging_steps=10, planned=None) == 160
    # never past the planned end of the original schedule; --steps wins
    assert replay_end(80, 100, 200, steps=None, logging_steps=1, planned=210) == 210
    assert replay_end(80, 100, 200, steps=7, logging_steps=1, planned=None) == 87


def _diverge_plan(**kw):
    from lorascope.pipeline import analyze
    return make_plan(analyze(fixture_run("hf-lr-diverge")), **kw)


def test_automatic_checkpoint_is_the_last_before_the_onset():
    """hf-lr-diverge diverges from step 34 and saved at 25, 50, 75 and 100."""
    p = _diverge_plan()
    assert (p.rule, p.onset) == ("loss.divergence", 34)
    assert p.checkpoint.path.name == "checkpoint-25" and p.start == 25 < p.onset <= p.end
    p = _diverge_plan(from_step=34)          # at or before 34: checkpoint-25 again
    assert p.start == 25


@pytest.mark.parametrize("from_step", [50, 60, 100])
def test_from_step_past_the_onset_is_refused(from_step):
    """A replay resumed from checkpoint-50 starts after the failure: its curve cannot show
    the divergence whatever the fix does, so it must not be judged 'fixed'."""
    with pytest.raises(RerunError) as e:
        _diverge_plan(from_step=from_step, steps=2)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"--from-step {from_step}: the checkpoint at step ")
    assert "at or after the onset of loss.divergence (step 34)" in msg
    assert msg.endswith("use --from-step 25 (the last checkpoint before it)")


def test_steps_ending_before_the_onset_is_refused():
    with pytest.raises(RerunError, match=r"^--steps 8: the replay \(steps 26-33\) would end "
                                         r"before the onset of loss.divergence \(step 34\).*"
                                         r"use --steps 9 or more, or leave --steps out$"):
        _diverge_plan(steps=8)
    assert _diverge_plan(steps=9).end == 34              # the onset itself is replayed


def test_checkpoint_at_the_onset_is_refused_for_any_rule():
    """checkpoint-N holds the weights after step N: saved at the onset, it already took the
    failing step. With no save before it the remedy is a replay from scratch."""
    cks = [CheckpointRef(120, Path("out/lora-000001.safetensors"), kind="safetensors")]
    with pytest.raises(RerunError, match=r"^--from-step 130: the checkpoint at step 120 is at "
                                         r"or after the onset of loss.nonfinite \(step 120\).*"
                                         r"use --from-step 0 \(no checkpoint before it"):
        check_window("loss.nonfinite", 120, cks[0], 200, cks, from_step=130)
    check_window("loss.nonfinite", 120, None, 200, cks, from_step=0)      # from scratch: fine
    check_window("loss.nonfinite", 0, None, 10, cks)         # even for a symptom at step 0
    check_window("loss.nonfinite", 121, cks[0], 121, cks)                 # one step before


def test_refusal_exits_2_before_any_replay(tmp_path):
    """The issue's command line, and the same through --cmd: one line, exit 2, nothing
    trained or written."""
    run = fixture_run("hf-lr-diverge")
    out = tmp_path / "out"
    r = lorascope("rerun", run, "--fix", "--from-step", "50", "--steps", "2", "--device", "cpu",
                  "--out", out)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "lorascope: --from-step 50: the checkpoint at step 50 is at or after the onset of "
        "loss.divergence (step 34), so the replay would start past the failure and could not "
        "show whether the fix prevents it; use --from-step 25 (the last checkpoint before it)"]
    ran = tmp_path / "ran"
    cmd = f"{sys.executable} -c \"open(r'{ran}', 'w')\" {{config}}"
    r = lorascope("rerun", run, "--fix", "--from-step", "75", "--cmd", cmd, "--out", out,
                  "--format", "json")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "at or after the onset of loss.divergence" in r.stderr
    assert not ran.exists() and not out.exists()
