"""Special files and permissions: links into /proc, /sys and /dev (a `train.log` that is
`/proc/kmsg` blocks forever when read as root), config paths naming them, a dataset
folder that is `/`, a folder that cannot be listed, an image that cannot be read, and
click's usage errors."""
from __future__ import annotations

import os
import shutil
import time

import pytest
from PIL import Image

from helpers import lorascope
from hostile.util import base_run, problems_of, run_limited, strict_json

pytestmark = pytest.mark.timeout(300)


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: as root, drop the two
    capabilities that bypass them (the process keeps its uid, so the interpreter under
    /root stays readable); as anyone else, nothing."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_cli(*args, cwd, prefix=(), timeout=90):
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop("LORASCOPE_STRICT", None)
    r = subprocess.run([*prefix, sys.executable, "-m", "lorascope.cli", *map(str, args)], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return r


# -- 8. never read under /proc, /sys, /dev ---------------------------------------------

def test_links_into_proc_sys_dev_are_never_read(tmp_path):
    run = base_run(tmp_path / "run")
    (run / "train.log").symlink_to("/proc/kmsg")            # read() blocks forever as root
    (run / "config.toml").symlink_to("/proc/self/environ")
    (run / "adapter_model.safetensors").symlink_to("/proc/kcore")
    (run / "events.out.tfevents.1.host").symlink_to("/dev/urandom")
    (run / "sysfs").symlink_to("/sys/kernel")
    (run / "logs").mkdir()
    (run / "logs" / "out.txt").symlink_to("/proc/self/fd/0")
    t0 = time.monotonic()
    r = run_limited("analyze", run, "--format", "json", "--no-html", cwd=tmp_path, timeout=90)
    assert time.monotonic() - t0 < 60
    assert r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    assert doc["run"]["steps"]["last"] == 40                 # the real files were read
    for name in ("train.log", "config.toml", "adapter_model.safetensors",
                 "events.out.tfevents.1.host", "sysfs", "logs/out.txt"):
        probs = problems_of(doc, name)
        assert any("never read" in p for p in probs), (name, doc["run"]["sources"])
    assert not any(s["records"] for s in doc["run"]["sources"] if s["path"] != "trainer_state.json")


def test_config_paths_into_proc_are_never_read(tmp_path):
    run = base_run(tmp_path / "run")
    (run / "train_config.yaml").write_text("stage: sft\nfinetuning_type: lora\ndataset: k\n"
                                           "dataset_dir: /proc\nlearning_rate: 1.0e-4\n")
    (run / "dataset_info.json").write_text('{"k": {"file_name": "kmsg"}}')
    (run / "config.toml").write_text('train_data_dir = "/proc/self"\nnetwork_dim = 8\n')
    t0 = time.monotonic()
    r = run_limited("analyze", run, "--format", "json", "--no-html", cwd=tmp_path, timeout=90)
    assert time.monotonic() - t0 < 60 and r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    assert all(not s["path"].startswith("/proc") or s["records"] == 0 for s in doc["run"]["sources"])
    assert any("never read" in p for s in doc["run"]["sources"] for p in s["problems"]), doc["run"]["sources"]


def test_a_run_directory_under_proc_is_refused(tmp_path):
    r = run_limited("analyze", "/proc/self", "--no-html", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "never read" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- 11. permissions, the dataset folder "/", usage errors ---------------------------------

def test_folder_that_cannot_be_listed_is_named_in_sources(tmp_path):
    prefix = unprivileged()
    run = base_run(tmp_path / "run")
    (run / "locked").mkdir()
    (run / "locked" / "train.log").write_text("CUDA out of memory\n")
    os.chmod(run / "locked", 0)
    try:
        r = run_cli("analyze", run, "--format", "json", "--no-html", cwd=tmp_path, prefix=prefix)
    finally:
        os.chmod(run / "locked", 0o755)
    assert r.returncode in (0, 1), r.stderr
    probs = problems_of(strict_json(r.stdout), "locked")
    assert any("cannot list" in p and "ermission" in p for p in probs), probs


def test_unreadable_image_is_not_a_corrupt_image(tmp_path):
    prefix = unprivileged()
    run = base_run(tmp_path / "run")
    data = run / "img" / "10_x"
    data.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (10 * i, 100, 30)).save(data / f"ok{i}.png")
    Image.new("RGB", (64, 64), (1, 100, 30)).save(data / "locked.png")
    (run / "config.toml").write_text('train_data_dir = "img/10_x"\nnetwork_dim = 8\n')
    os.chmod(data / "locked.png", 0)
    try:
        r = run_cli("analyze", run, "--format", "json", "--no-html", cwd=tmp_path, prefix=prefix)
    finally:
        os.chmod(data / "locked.png", 0o644)
    assert r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    assert "data.corrupt_image" not in {f["rule"] for f in doc["findings"]}, doc["findings"]
    probs = [p for s in doc["run"]["sources"] if s["kind"].startswith("dataset") for p in s["problems"]]
    assert any("locked.png" in p and "ermission" in p for p in probs), probs


def test_dataset_folder_slash_embeds_nothing_from_elsewhere(tmp_path):
    run = base_run(tmp_path / "run")
    (run / "config.toml").write_text('train_data_dir = "/"\nnetwork_dim = 8\n')
    # an unrelated, flaggable image elsewhere on the disk
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "somebody_elses.png")
    t0 = time.monotonic()
    r = run_limited("analyze", run, "--format", "json", "--html", tmp_path / "r.html", cwd=tmp_path,
                    timeout=120)
    assert time.monotonic() - t0 < 90 and r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    page = (tmp_path / "r.html").read_text()
    assert "data:image/jpeg" not in page and "somebody_elses" not in page
    probs = [p for s in doc["run"]["sources"] for p in s["problems"]]
    assert any("encloses the run directory" in p for p in probs), doc["run"]["sources"]


def test_click_usage_errors_are_one_line(tmp_path):
    run = base_run(tmp_path / "run")
    for args in (["analyze", run, "--jobs", "0"], ["analyze"], ["analyze", run, "--format", "xml"],
                 ["nosuchcommand"], ["inspect"], ["analyze", run, "--bogus"]):
        r = lorascope(*args)
        assert r.returncode == 2, (args, r.returncode)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("lorascope: "), (args, r.stderr)
    r = lorascope("analyze", run, "--jobs", "0", subprocess_=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--jobs" in r.stderr
