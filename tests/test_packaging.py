"""An installed wheel (not only a checkout) finds the rule catalog and the report templates."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT, write_trainer_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    return next(out.glob("lorascope-*.whl"))


def test_wheel_carries_catalog_and_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lorascope/_data/rules/loss.toml" in names
    assert "lorascope/_data/reports/templates/report.html.j2" in names
    assert "lorascope/cli.py" in names
    # the charting library the pages inline, with its licence; the page's own scripts
    for f in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "SOURCE.md"):
        assert f"lorascope/_vendor/uplot/{f}" in names, f
    for f in ("charts.js", "tables.js", "filters.js"):
        assert f"lorascope/_data/reports/templates/{f}" in names, f
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lorascope = lorascope.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_analyzes_and_writes_html(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    run = tmp_path / "run"
    write_trainer_state(run, [{"step": s, "loss": 1.0 / s + 0.5} for s in range(1, 41)],
                        max_steps=80, global_step=40)
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("LORASCOPE_STRICT", None)
    code = ("import lorascope, sys; assert lorascope.__file__.startswith(sys.argv[1]), lorascope.__file__; "
            "from lorascope.cli import main; sys.argv = ['lorascope'] + sys.argv[2:]; main()")
    r = subprocess.run([sys.executable, "-c", code, str(target), "analyze", str(run), "--format", "json",
                        "--html", str(tmp_path / "r.html")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert any(f["rule"] == "run.incomplete" for f in doc["findings"])
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "https://github.com/leeoniya/uPlot (v1.6.32)" in page
