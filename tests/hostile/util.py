"""Shared checks of the hostile-input suite: every bad run directory gets a clear
answer through the real command line (CONTRACT §1) and leaves the run untouched."""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, lorascope, tree_digest, write_trainer_state

MEM_LIMIT = 3 * 1024 ** 3          # address space for a CLI run under a memory limit


def _no_nan(const: str):
    raise ValueError(f"non-standard JSON constant {const}")


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what any other JSON parser would)."""
    return json.loads(text, parse_constant=_no_nan)


def healthy_history(n: int = 40) -> list[dict]:
    return [{"step": s, "epoch": s / 20, "loss": round(2 * math.exp(-s / 15) + 0.3, 4),
             "learning_rate": 2e-4, "grad_norm": 0.7} for s in range(1, n + 1)]


def base_run(d: Path, n: int = 40) -> Path:
    """A readable, healthy run (trainer_state.json) to put hostile files beside."""
    write_trainer_state(d, healthy_history(n), max_steps=n, global_step=n, logging_steps=1)
    return d


def _limit_memory() -> None:            # preexec_fn: runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def run_limited(*args, cwd: Path, timeout: float = 240):
    """The CLI as a real process under RLIMIT_AS: an allocation sized by a number read
    from a file fails there (MemoryError -> internal error, or a kill) instead of passing."""
    env = dict(os.environ)
    env.pop("LORASCOPE_STRICT", None)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "lorascope.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory)

    class R:
        returncode, stdout, stderr = r.returncode, r.stdout, r.stderr
    return R


def assert_clear_answer(r, *, allow_exit2: bool = True) -> dict | None:
    """Exit 0/1 with one strict JSON document on stdout, or exit 2 with one line on stderr.
    Never a traceback, never the catch-all 'internal error'.  Returns the document."""
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "internal error" not in r.stderr, r.stderr[-2000:]
    if r.returncode == 2 and allow_exit2:
        assert r.stdout.strip() == "", r.stdout[:500]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("lorascope: "), r.stderr[-2000:]
        return None
    assert r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr[-2000:]}"
    doc = strict_json(r.stdout)
    assert doc["schema"] == "lorascope.report/1"
    assert doc["verdict"] in ("healthy", "warning", "failed")
    for s in doc["run"]["sources"]:
        for p in s["problems"]:
            # a parser that raised was caught by the builder: that is a bug, not an answer
            assert not p.startswith("parser failed"), (s["path"], p)
    return doc


def analyze(run_dir: Path, out: Path, *, subprocess_: bool = False, limited: bool = False,
            html: bool = True, expect_doc: bool = False, timeout: float = 240):
    """Run `lorascope analyze RUN --format json` (HTML into out/) and check the answer
    and that the run directory is byte-for-byte unchanged.  Returns (result, doc, html)."""
    out.mkdir(parents=True, exist_ok=True)
    before = tree_digest(run_dir)
    target = out / "report.html"
    args = ["analyze", run_dir, "--format", "json"] + (["--html", target] if html else ["--no-html"])
    t0 = time.monotonic()
    if limited:
        r = run_limited(*args, cwd=out, timeout=timeout)
    else:
        r = lorascope(*args, cwd=out, subprocess_=subprocess_)
    r.elapsed = time.monotonic() - t0
    doc = assert_clear_answer(r, allow_exit2=not expect_doc)
    assert tree_digest(run_dir) == before, "the run directory was modified"
    page = target.read_text(encoding="utf-8") if (html and doc is not None and target.exists()) else None
    return r, doc, page


def run_in_pty(args, *, cwd: Path, timeout: float = 240, env: dict | None = None) -> bytes:
    """The CLI as a real process whose stdout and stderr are a pseudo-terminal (what a
    user sees: colours on, progress on); returns every byte the terminal received."""
    import pty
    import select
    e = dict(os.environ)
    for k in ("LORASCOPE_STRICT", "NO_COLOR"):
        e.pop(k, None)
    e.update(TERM="xterm-256color", **(env or {}))
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "lorascope.cli", *map(str, args)], cwd=cwd, env=e,
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    return bytes(out)


def problems_of(doc: dict, path_part: str) -> list[str]:
    return [p for s in doc["run"]["sources"] if path_part in s["path"] for p in s["problems"]]


__all__ = ["ROOT", "analyze", "assert_clear_answer", "base_run", "healthy_history", "problems_of",
           "run_in_pty", "run_limited", "strict_json"]
