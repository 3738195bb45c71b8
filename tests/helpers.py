"""Shared test helpers (importable as `helpers`: tests/ is on pytest's pythonpath)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "runs"
WILD = ROOT.parent / "shared" / "wild-runs"

class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def lorascope(*args, cwd=None, env=None, subprocess_=False):
    """Run the command line as a user would: in-process through click's runner (fast),
    or as a real `python -m lorascope.cli` subprocess with subprocess_=True."""
    e = dict(os.environ)
    e.pop("LORASCOPE_STRICT", None)
    e.update(env or {})
    if subprocess_:
        r = subprocess.run([sys.executable, "-m", "lorascope.cli", *map(str, args)],
                           capture_output=True, text=True, cwd=cwd, env=e, timeout=300)
        return Result(r.returncode, r.stdout, r.stderr)
    from click.testing import CliRunner
    from lorascope.cli import cli
    old = os.getcwd()
    strict = os.environ.pop("LORASCOPE_STRICT", None)
    try:
        if cwd is not None:
            os.chdir(cwd)
        r = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    finally:
        os.chdir(old)
        if strict is not None:
            os.environ["LORASCOPE_STRICT"] = strict
    return Result(r.exit_code, r.stdout, r.stderr)


def tree_digest(path: Path) -> dict:
    """Every file under path with its size, mtime and content hash."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def fixture_run(name: str) -> Path:
    p = FIXTURES / name
    if not p.is_dir():
        pytest.skip(f"fixture run {name} not generated (python fixtures/make_fixtures.py)")
    return p


def write_trainer_state(run_dir: Path, log_history, max_steps, global_step, **kw) -> Path:
    """A trainer_state.json written by transformers' own TrainerState."""
    from transformers import TrainerState
    st = TrainerState()
    st.log_history = list(log_history)
    st.max_steps = max_steps
    st.global_step = global_step
    for k, v in kw.items():
        setattr(st, k, v)
    run_dir.mkdir(parents=True, exist_ok=True)
    st.save_to_json(str(run_dir / "trainer_state.json"))
    return run_dir / "trainer_state.json"


def load_json(text: str):
    return json.loads(text)


def wild_file(rel: str) -> Path:
    """A file of ../shared/wild-runs, or skip the test where that folder is absent."""
    p = WILD / rel
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


def series_by_tag(parsed) -> dict:
    return {s.tag: s for s in parsed.series}
