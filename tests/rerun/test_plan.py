"""Planning: diagnosis choice, checkpoint before onset, replay window (no torch)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lorascope.model import Finding
from lorascope.rerun.plan import (RerunError, choose_checkpoint, choose_diagnosis,
                                  find_checkpoints, replay_end)


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
