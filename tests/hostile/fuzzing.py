"""Import fuzz/harness.py (the targets shared with the atheris harnesses)."""
from __future__ import annotations

import importlib.util
import sys

from helpers import ROOT

FUZZ = ROOT / "fuzz"
SEEDS = FUZZ / "seeds"


def _load():
    if "lorascope_fuzz_harness" in sys.modules:
        return sys.modules["lorascope_fuzz_harness"]
    spec = importlib.util.spec_from_file_location("lorascope_fuzz_harness", FUZZ / "harness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


harness = _load()


def seeds(target: str) -> list[bytes]:
    d = SEEDS / target
    return [p.read_bytes() for p in sorted(d.iterdir())] if d.is_dir() else []
