"""An installed wheel (not only a checkout) finds the rule catalog and the report templates."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT, write_trainer_state

pytestmark = pytest.mark.slow


def _build_wheel(out, **env):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    return next(out.glob("lorascope-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def _install(wheel, target):
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, timeout=300)


SCAN_PATH = ("import sys; sys.path.insert(0, sys.argv[1]); import lorascope.ingest._tensorscan as t; "
             "assert t.__file__.startswith(sys.argv[1]), t.__file__; "
             "print('compiled' if t.KERNEL is not None else 'numpy')")


def _cc() -> bool:
    import shutil
    import sysconfig
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


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


def test_wheel_carries_the_compiled_scan_where_a_compiler_is(wheel, tmp_path):
    """With a C compiler at build time the wheel holds the checkpoint scan's compiled pass
    (a platform wheel) and the installed lorascope uses it."""
    if not _cc():
        pytest.skip("no C compiler here: the wheel is pure Python (next test)")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("lorascope/ingest/_scankernel.") and n.endswith((".so", ".pyd")) for n in names), names
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    _install(wheel, tmp_path / "site")
    r = subprocess.run([sys.executable, "-c", SCAN_PATH, str(tmp_path / "site")],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "compiled", r.stderr


def test_without_the_compiled_scan_the_wheel_is_pure_and_scans_with_numpy(tmp_path):
    """LORASCOPE_NO_KERNEL=1 (what a machine without a compiler gets): a pure-Python wheel
    whose lorascope reads adapters with numpy alone, to the same statistics."""
    plain = _build_wheel(tmp_path / "w", LORASCOPE_NO_KERNEL="1")
    assert plain.name.endswith("-py3-none-any.whl"), plain.name
    assert not any("_scankernel." in n and not n.endswith((".pyx", ".h"))
                   for n in zipfile.ZipFile(plain).namelist())
    _install(plain, tmp_path / "site")
    r = subprocess.run([sys.executable, "-c", SCAN_PATH, str(tmp_path / "site")],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "numpy", r.stderr


def test_installed_wheel_analyzes_and_writes_html(wheel, tmp_path):
    target = tmp_path / "site"
    _install(wheel, target)
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
