"""Does a change to the checkpoint scan keep its numbers?  Dumps, for every safetensors
file given (default: every one under fixtures/ and ../shared/wild-runs), what
``lorascope.ingest.safetensors.read`` makes of it: the checkpoint's summary, every
tensor's statistics and every module's, as JSON; then compares two dumps.

    # the statistics of the code on PYTHONPATH, into a file
    PYTHONPATH=/path/to/old/checkout python bench/scan_equivalence.py dump old.json
    PYTHONPATH=. python bench/scan_equivalence.py dump new.json [FILES...]
    python bench/scan_equivalence.py compare old.json new.json [--rel 1e-5]

``compare`` wants strings, integers and flags identical and every float within ``--rel``
relative (``--abs`` absolute below that scale); it prints each difference and exits 1
when there is one.  Files under ``--dir`` (repeatable) are searched recursively.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = (ROOT / "fixtures", ROOT.parent / "shared" / "wild-runs")


def _files(args) -> list[Path]:
    if args.files:
        return [Path(f) for f in args.files]
    dirs = [Path(d) for d in args.dir] or [d for d in DEFAULT_DIRS if d.is_dir()]
    return sorted(p for d in dirs for p in d.rglob("*.safetensors") if p.is_file())


def dump(files: list[Path]) -> dict:
    from lorascope.ingest.safetensors import read
    out = {}
    for p in files:
        r = read(p, p.name)
        ck = r.checkpoint
        out[str(p)] = {
            "readable": r.readable, "facts": r.facts,
            "summary": {k: getattr(ck, k) for k in ("format", "step", "size_bytes", "dtype", "rank",
                                                      "alpha", "target_modules", "problems",
                                                      "truncated")},
            "tensors": {t.name: [t.dtype, list(t.shape), t.nonfinite, t.zero, t.abs_max, t.norm,
                                 t.mean_abs] for t in ck.tensors},
            "modules": {m.name: [m.rank, m.alpha, m.norm, m.mean_abs, m.zero, m.nonfinite]
                        for m in ck.modules},
        }
    return out


WORST = [0.0]          # the largest relative difference of two floats compared


def _same(a, b, rel: float, abs_: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
            return a is b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if a != b and abs(a - b) > abs_:
            WORST[0] = max(WORST[0], abs(a - b) / max(abs(a), abs(b)))
        return a == b or abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel, abs_) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel, abs_) for k in a)
    return a == b and type(a) is type(b)


def compare(old: dict, new: dict, rel: float, abs_: float) -> int:
    diffs = 0
    values = 0
    for f in sorted(old.keys() | new.keys()):
        if f not in old or f not in new:
            print(f"{f}: only in {'new' if f in new else 'old'}")
            diffs += 1
            continue
        a, b = old[f], new[f]
        for part in ("readable", "facts", "summary"):
            values += 1
            if not _same(a[part], b[part], rel, abs_):
                print(f"{f}: {part}: {a[part]!r} != {b[part]!r}")
                diffs += 1
        for part in ("tensors", "modules"):
            if a[part].keys() != b[part].keys():
                print(f"{f}: {part}: different names")
                diffs += 1
                continue
            for name, va in a[part].items():
                values += len(va)
                if not _same(va, b[part][name], rel, abs_):
                    print(f"{f}: {part[:-1]} {name}: {va} != {b[part][name]}")
                    diffs += 1
    n_t = sum(len(v["tensors"]) for v in old.values())
    n_m = sum(len(v["modules"]) for v in old.values())
    print(f"{len(old)} files, {n_t} tensors, {n_m} modules, {values} values compared: "
          f"{diffs} difference(s) beyond {rel:g} relative; largest relative difference "
          f"{WORST[0]:.3g}")
    return 1 if diffs else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("files", nargs="*")
    d.add_argument("--dir", action="append", default=[])
    c = sub.add_parser("compare")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--rel", type=float, default=1e-5)
    c.add_argument("--abs", dest="abs_", type=float, default=1e-30)
    a = ap.parse_args()
    if a.cmd == "dump":
        files = _files(a)
        Path(a.out).write_text(json.dumps(dump(files), allow_nan=True))
        print(f"{len(files)} files -> {a.out}")
    else:
        sys.exit(compare(json.loads(Path(a.old).read_text()), json.loads(Path(a.new).read_text()),
                         a.rel, a.abs_))


if __name__ == "__main__":
    main()
