"""CI's bounded coverage-guided fuzzing: every atheris harness for a few seconds
(LORASCOPE_FUZZ_SECONDS, default 12).  A crash fails the test and leaves the input in
fuzz/corpus/<target>/crashes/."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hostile.fuzzing import FUZZ, harness

pytest.importorskip("atheris")

SECONDS = int(os.environ.get("LORASCOPE_FUZZ_SECONDS", 12))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 4 + 120)
@pytest.mark.parametrize("target", sorted(harness.TARGETS))
def test_atheris_harness_finds_no_crash(target, tmp_path):
    crashes = FUZZ / "corpus" / target / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    env = dict(os.environ)
    env.pop("LORASCOPE_STRICT", None)
    r = subprocess.run([sys.executable, str(FUZZ / f"fuzz_{target}.py"), str(tmp_path), str(FUZZ / "seeds" / target),
                        f"-max_total_time={SECONDS}", "-timeout=20", "-rss_limit_mb=2560", "-max_len=65536",
                        f"-artifact_prefix={crashes}/", "-print_final_stats=1"],
                       capture_output=True, text=True, env=env, timeout=SECONDS * 4 + 100)
    new = set(crashes.iterdir()) - before
    assert r.returncode == 0 and not new, (sorted(map(str, new)), r.stderr[-3000:])
    assert "stat::number_of_executed_units" in r.stderr
