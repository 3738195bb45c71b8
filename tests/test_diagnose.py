"""Diagnosis: causes that fired are linked to the symptom, ranked; the fix follows the top cause."""
from lorascope.diagnose import diagnose, verdict
from lorascope.model import Config, Finding, Run, StepInfo

CATALOG = {
    "loss.nonfinite": {"severity": "critical", "causes": {"data.degenerate_image": 0.6, "config.lr_high": 0.5},
                       "fix": {"learning_rate": "*0.2", "max_grad_norm": 1.0}},
    "data.degenerate_image": {"severity": "warning"},
    "config.lr_high": {"severity": "warning"},
}


def run(lr=1e-3):
    return Run(path=".", name="x", steps=StepInfo(1, 100, 100),
               config=Config(values={"learning_rate": lr}))


def nonfinite():
    return Finding("loss.nonfinite", "critical", "NaN at step 6", step=6)


def test_causes_that_fired_are_ranked_and_their_fix_applied():
    lr = Finding("config.lr_high", "warning", "lr 1e-3 is high", fix={"learning_rate": 1e-4})
    out = diagnose(run(), [nonfinite(), lr], CATALOG)
    f = next(f for f in out if f.rule == "loss.nonfinite")
    assert [c.rule for c in f.causes] == ["config.lr_high"]
    # the cause's own fix wins, the catalog default adds what the cause does not say
    assert f.fix == {"learning_rate": 1e-4, "max_grad_norm": 1.0}
    assert verdict(out) == "failed"


def test_no_cause_gets_the_relative_default_fix():
    f = diagnose(run(lr=5e-4), [nonfinite()], CATALOG)[0]
    assert f.causes == [] and f.fix == {"learning_rate": 0.0001, "max_grad_norm": 1.0}


def test_data_cause_on_top_drops_the_generic_setting_change():
    img = Finding("data.degenerate_image", "warning", "1 image is blank", files=["a.png"])
    lr = Finding("config.lr_high", "warning", "lr 1e-3 is high", fix={"learning_rate": 1e-4})
    f = next(f for f in diagnose(run(), [nonfinite(), img, lr], CATALOG) if f.rule == "loss.nonfinite")
    assert [c.rule for c in f.causes] == ["data.degenerate_image", "config.lr_high"]
    # the lr cause still contributes its own fix; the catalog default does not
    assert f.fix == {"learning_rate": 1e-4}
    f = next(f for f in diagnose(run(), [nonfinite(), img], CATALOG) if f.rule == "loss.nonfinite")
    assert f.fix == {}


def test_findings_sorted_by_severity_then_step():
    a = Finding("config.lr_high", "warning", "w")
    b = Finding("loss.nonfinite", "critical", "c", step=50)
    c = Finding("data.degenerate_image", "critical", "c2", step=None)
    out = diagnose(run(), [a, c, b], CATALOG)
    assert [f.rule for f in out] == ["loss.nonfinite", "data.degenerate_image", "config.lr_high"]
    assert verdict([a]) == "warning" and verdict([]) == "healthy"
