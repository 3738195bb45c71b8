"""The builder's judgement of runs mixed into one directory."""
import numpy as np

from lorascope.build import detect_mixed
from lorascope.model import RawSeries


def raw(source, steps, values):
    return RawSeries("loss", np.asarray(steps, np.int64), np.asarray(values, float), source)


def test_one_curve_written_by_two_writers_is_not_two_runs():
    steps = np.arange(1, 51)
    loss = 2.0 / np.sqrt(steps)
    a = raw("trainer_state.json", steps, np.round(loss, 4))
    b = raw("trainer_log.jsonl", steps[::5], loss[::5])
    assert detect_mixed({"loss": [a, b]}, []) == []


def test_two_runs_from_step_one_are_mixed():
    steps = np.arange(1, 51)
    a = raw("logs/events.A", steps, 2.0 / np.sqrt(steps))
    b = raw("logs/events.B", steps[:30], 3.0 / np.sqrt(steps[:30]))
    ev = detect_mixed({"loss": [a, b]}, [])
    assert len(ev) == 1 and "both start at step 1" in ev[0]


def test_resume_from_a_checkpoint_is_not_a_restart():
    # a resumed run rewrites steps 41-50 after the checkpoint at 40: not a second run
    steps = np.concatenate([np.arange(1, 51), np.arange(41, 61)])
    r = raw("logs/events.A", steps, 1.0 / steps)
    assert detect_mixed({"loss": [r]}, []) == []
    # a second run into the same file starts over at step 1
    steps = np.concatenate([np.arange(1, 51), np.arange(1, 31)])
    r = raw("logs/events.A", steps, 1.0 / steps)
    assert "goes back from step 50 to step 1" in detect_mixed({"loss": [r]}, [])[0]
