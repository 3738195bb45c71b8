"""Hostile `--rules` files: NaN thresholds that would turn a diverging run healthy, wrong
shapes and types, values out of range, bytes that are not UTF-8, deep nesting, a FIFO,
`/dev/zero` and a huge file.  Each is refused with one line and exit 2, fast and within
the memory limit; a valid override still works."""
from __future__ import annotations

import os
import time
import tomllib

import pytest

from helpers import ROOT, lorascope, write_trainer_state
from hostile.util import run_limited

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def diverging(tmp_path):
    hist = [{"step": s, "loss": 2.0 / s + (0 if s < 20 else (s - 20) * 0.8), "learning_rate": 1e-3,
             "grad_norm": 1.0} for s in range(1, 41)]
    write_trainer_state(tmp_path / "run", hist, max_steps=40, global_step=40, logging_steps=1)
    return tmp_path / "run"


def one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout[:300], r.stderr)
    assert r.stdout.strip() == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lorascope: "), r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


BAD = {
    "nan_threshold": ('["loss.divergence".params]\nmin_ratio = nan\nmin_abs_rise = nan\n', "finite"),
    "inf_threshold": ('["loss.spike".params]\nmin_z = inf\n', "finite"),
    "params_not_table": ('["loss.spike"]\nparams = 5\n', "table"),
    "entry_not_table": ('"loss.spike" = 3\n', "table"),
    "negative_count": ('["log.oom".params]\nmax_evidence = -1\n', ">= 0"),
    "float_count": ('["loss.spike".params]\nmax_points = 2.5\n', "whole number"),
    "bool_count": ('["loss.spike".params]\nmax_points = true\n', "whole number"),
    "share_above_one": ('["grad.nonfinite".params]\nmany_share = 1.5\n', "<= 1"),
    "zero_ratio": ('["loss.spike".params]\nmin_ratio = 0\n', "> 0"),
    "percentile_above_100": ('["grad.explosion".params]\nbaseline_percentile = 250\n', "<= 100"),
    "severity_param": ('["grad.nonfinite".params]\nmany_severity = "fatal"\n', "one of"),
    "list_of_numbers": ('["config.lr_high".params]\nadaptive_optimizers = [1, 2]\n', "items"),
    "string_for_number": ('["loss.spike".params]\nmin_ratio = "2"\n', "number"),
    "huge_int": ('["log.oom".params]\nmax_evidence = 9223372036854775807\n', "too large"),
    "cause_confidence": ('["loss.spike".causes]\n"config.lr_high" = 7.0\n', "between 0 and 1"),
    "cause_unknown_rule": ('["loss.spike".causes]\n"no.such" = 0.5\n', "unknown rule"),
    "fix_nan": ('["loss.spike".fix]\nlearning_rate = nan\n', "finite"),
    "fix_unknown_key": ('["loss.spike".fix]\nrm_rf = 1\n', "normalized config key"),
    "fix_bad_factor": ('["loss.spike".fix]\nlearning_rate = "*nan"\n', "factor"),
    "unknown_entry_key": ('["loss.spike"]\nseverty = "info"\n', "unknown key"),
    "summary_not_string": ('["loss.spike"]\nsummary = [1]\n', "string"),
    "deep_arrays": ("x = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested"),
    "deep_tables": ("[" + ".".join(["a"] * 2000) + "]\nx = 1\n", "nested"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_rules_file_is_refused_in_one_line(tmp_path, diverging, name):
    text, word = BAD[name]
    f = tmp_path / "rules.toml"
    f.write_text(text)
    for cmd in (["analyze", diverging, "--no-html", "--rules", f], ["rules", "--rules", f]):
        r = lorascope(*cmd)
        one_line_exit_2(r, word)


def test_nan_thresholds_never_turn_a_diverging_run_healthy(tmp_path, diverging):
    r = lorascope("analyze", diverging, "--no-html")
    # the run does blow up (a jump from 0.1 to 0.9 and a climb to 15: loss.spike by its shape)
    assert r.returncode == 1 and ("loss.divergence" in r.stdout or "loss.spike" in r.stdout)
    f = tmp_path / "rules.toml"
    f.write_text('["loss.divergence".params]\nmin_ratio = nan\nmin_abs_rise = nan\nmin_z = nan\n'
                 '["loss.spike".params]\nmin_ratio = nan\nmin_abs_jump = nan\nmin_z = nan\n')
    r = lorascope("analyze", diverging, "--no-html", "--rules", f)
    one_line_exit_2(r, "finite")


def test_non_utf8_rules_file(tmp_path, diverging):
    f = tmp_path / "rules.toml"
    f.write_bytes(b'["loss.spike"]\nsummary = "\xff\xfe caf\xe9"\n')
    one_line_exit_2(lorascope("analyze", diverging, "--no-html", "--rules", f), "UTF-8")


def test_fifo_dev_zero_and_huge_rules_files(tmp_path, diverging):
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    with open(huge, "w") as fh:                            # valid TOML, 20 MB of comments
        fh.write('["loss.spike"]\nseverity = "warning"\n')
        for _ in range(20):
            fh.write("#" + "x" * (1 << 20) + "\n")
    for f, word in ((fifo, "regular file"), ("/dev/zero", "/dev"), (huge, "larger than"),
                    (tmp_path, "regular file"), (tmp_path / "missing.toml", "cannot read")):
        t0 = time.monotonic()
        r = run_limited("analyze", diverging, "--no-html", "--rules", f, cwd=tmp_path, timeout=60)
        assert time.monotonic() - t0 < 30
        one_line_exit_2(r, word)


def test_every_default_passes_its_own_validation():
    """The validation is driven by the built-in catalog (types of the defaults, the
    names' ranges, [rule.bounds]): the catalog as shipped must pass it, so a new param
    added to rules/*.toml is validated without touching code."""
    from lorascope.rules.registry import load_catalog, validate_override
    cat = load_catalog()
    for rid, entry in cat.items():
        user = {k: v for k, v in entry.items() if k in ("severity", "params", "causes", "fix")}
        validate_override(rid, user, entry, cat, "catalog")
    assert len(list((ROOT / "rules").glob("*.toml"))) >= 5


def test_a_valid_override_still_applies(tmp_path, diverging):
    import json
    f = tmp_path / "rules.toml"
    f.write_text('[rules."loss.divergence"]\nseverity = "info"\n[rules."loss.divergence".params]\n'
                 'min_ratio = 1.6\n[rules."loss.spike"]\nseverity = "info"\n'
                 '[rules.curves.params]\nwarmup_frac = 0.1\n')
    assert tomllib.loads(f.read_text())
    r = lorascope("analyze", diverging, "--no-html", "--rules", f, "--format", "json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    sev = {x["rule"]: x["severity"] for x in json.loads(r.stdout)["findings"]}
    rose = {k: v for k, v in sev.items() if k in ("loss.divergence", "loss.spike")}
    assert rose and set(rose.values()) == {"info"}, sev
