import numpy as np

from curves import alarms, decay, make_run


def test_eval_configured_but_missing_fires_and_names_label_names():
    run = make_run(np.exp(decay(500)), config={"eval_strategy": "steps", "eval_steps": 100})
    (f,) = alarms("eval.missing", run)
    assert f.severity == "warning" and f.step is None
    assert any("label_names" in c.text for c in f.causes)
    assert f.fix == {"label_names": ["labels"]}


def test_silent_when_eval_logged_not_configured_or_not_yet_due():
    base = np.exp(decay(500))
    ran = make_run(base, eval_steps=[100, 200], eval_vals=[1.0, 0.9],
                   config={"eval_strategy": "steps", "eval_steps": 100})
    assert alarms("eval.missing", ran) == []
    assert alarms("eval.missing", make_run(base, config={"eval_strategy": "no", "eval_steps": 500})) == []
    # HF writes eval_steps=500 into every trainer_state: alone it does not mean evaluation
    assert alarms("eval.missing", make_run(base, config={"eval_steps": 100})) == []
    assert alarms("eval.missing", make_run(base, config={"eval_strategy": "steps",
                                                          "eval_steps": 1000})) == []


def test_epoch_strategy_needs_a_finished_epoch():
    base = np.exp(decay(500))
    assert alarms("eval.missing", make_run(base, config={"eval_strategy": "IntervalStrategy.EPOCH"})) == []
    (f,) = alarms("eval.missing", make_run(base, bounds=[251], config={"eval_strategy": "epoch"}))
    assert "epoch" in f.title
