"""Checkpoint scan benchmark: how fast lorascope reads the adapters people have.

``matrix`` (the default) writes, one at a time, 1 GiB kohya-layout LoRA files with the
``safetensors`` package (down ``[rank, 3072]`` and up ``[3072, rank]`` weights of 3072-wide
projections, an F32 alpha per layer: the way a large SDXL or LLM adapter looks) for
ranks 4, 16, 64 and 256 in F16, BF16 and F32; rank 16 F16 is "the many-small-layers
file" of issue 18 (5,461 layers).  Each is fsynced and read once to warm the page cache,
then timed, each measure ``--repeat`` times, best and spread:

* **page cache**: ``cat FILE > /dev/null`` (a fresh process, start included);
* **in-process**: ``read_checkpoint`` in a fresh subprocess after its imports (header
  checks, every tensor's statistics, every layer's exact update norm);
* **end to end**: ``lorascope inspect FILE --format json > /dev/null`` in a fresh process:
  what a user waits for, Python's start and the imports included;
* **start-up**: the same command on a one-layer file.

``--baseline DIR`` also times the in-process scan and the CLI of the lorascope checkout in
DIR (for instance ``git archive main | tar -x -C DIR``) on the same warm file, each run
alternating with this checkout's, so both see the same machine load.

Rates are in GB/s (1e9 bytes).  CPU seconds (user + sys, the process and its threads)
and the load average are printed beside: on a shared machine they tell how much of a
slow run was someone else's.

``torch`` compares with ``safetensors.torch.load_file`` + the same statistics in torch
on a file of mixed widths (640-5120), as before issue 18.

Usage: python bench/bench_ckpt.py [matrix] [--ranks 4,16,64,256] [--dtypes f16,bf16,f32]
           [--size-gb 1.0737] [--repeat 3] [--dir DIR] [--baseline CHECKOUT] [--json OUT]
       python bench/bench_ckpt.py torch [--size-gb 1.0] [--dtype bf16|f16] [--rank 64]
           [--repeat 3] [--methods lorascope,lorascope1,torch,torch1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIMS = (640, 1280, 2048, 5120)
RANK = 64                                   # --rank changes it
ROOT = Path(__file__).resolve().parents[1]
# this checkout's lorascope, not an installed one (a --baseline worker: that checkout's)
sys.path.insert(0, os.environ.get("BENCH_LORASCOPE_ROOT") or str(ROOT))
WIDTH = 3072                                # the matrix files' projection width


def write_file(path: Path, size_gb: float, dtype: str) -> tuple[int, int]:
    """A kohya-layout LoRA of about size_gb; returns (bytes, modules)."""
    from safetensors import TensorSpec, serialize_file
    rng = np.random.default_rng(0)
    target = int(size_gb * 1e9)
    tensors: dict = {}
    keep: list[np.ndarray] = []          # buffers the specs point into
    total, i = 0, 0
    pool = rng.standard_normal(1 << 22, dtype=np.float32) * 0.02   # reused noise: fast to write

    def spec(arr: np.ndarray, st: str, shape: tuple[int, ...]) -> TensorSpec:
        keep.append(arr)
        return TensorSpec(dtype=st, shape=shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)

    def data(shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        off = int(rng.integers(0, pool.size))
        x = np.roll(pool, off)
        reps = -(-n // pool.size)
        x = np.tile(x, reps)[:n] if reps > 1 else x[:n]
        if dtype == "bf16":
            return (x.view(np.uint32) >> 16).astype("<u2")
        return x.astype("<f2")

    st = "bfloat16" if dtype == "bf16" else "float16"
    while total < target:
        d_in, d_out = DIMS[i % len(DIMS)], DIMS[(i + 1) % len(DIMS)]
        name = f"lora_unet_blocks_{i}_attn_to_q"
        for suf, shape in ((".lora_down.weight", (RANK, d_in)), (".lora_up.weight", (d_out, RANK))):
            b = data(shape)
            tensors[name + suf] = spec(b, st, shape)
            total += b.nbytes
        tensors[name + ".alpha"] = spec(np.array(RANK / 2, "<f4"), "float32", ())
        i += 1
    serialize_file(tensors, str(path), metadata={"ss_network_dim": str(RANK),
                                                  "ss_network_alpha": str(RANK // 2)})
    with open(path, "rb") as f:          # written back to disk: clean pages, as for a file
        os.fsync(f.fileno())             # saved by an earlier run (dirty ones fault slower)
    return path.stat().st_size, i


def write_uniform(path: Path, nbytes: int, rank: int, dtype: str) -> int:
    """A kohya-layout LoRA of about nbytes: down [rank, WIDTH] and up [WIDTH, rank] per
    layer in dtype (f16, bf16, f32), an F32 alpha each; returns the number of layers."""
    from safetensors import TensorSpec, serialize_file
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(1 << 22, dtype=np.float32) * 0.02
    isz = 4 if dtype == "f32" else 2
    layers = max(1, nbytes // (2 * rank * WIDTH * isz))
    st = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[dtype]
    keep, specs = [], {}
    n = rank * WIDTH
    for i in range(layers):
        name = f"lora_unet_blocks_{i}_attn_to_q"
        for suf, shape in ((".lora_down.weight", (rank, WIDTH)), (".lora_up.weight", (WIDTH, rank))):
            off = int(rng.integers(0, max(1, pool.size - n)))
            x = pool[off:off + n] if n <= pool.size else np.resize(pool, n)
            b = (x.view(np.uint32) >> 16).astype("<u2") if dtype == "bf16" else x.astype("<f2" if dtype == "f16" else "<f4")
            keep.append(b)
            specs[name + suf] = TensorSpec(dtype=st, shape=shape, data_ptr=b.ctypes.data, data_len=b.nbytes)
        a = np.array(rank / 2, "<f4")
        keep.append(a)
        specs[name + ".alpha"] = TensorSpec(dtype="float32", shape=(), data_ptr=a.ctypes.data, data_len=4)
    serialize_file(specs, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank // 2)})
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return layers


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# -- workers (run in a subprocess) ---------------------------------------------------

def work_lorascope(path: str) -> dict:
    from lorascope.ingest.safetensors import read_checkpoint
    t0 = time.perf_counter()
    ck = read_checkpoint(Path(path), "bench.safetensors")
    dt = time.perf_counter() - t0
    total = sum(m.norm or 0.0 for m in ck.modules)
    return {"seconds": dt, "modules": len(ck.modules), "check": total, "problems": ck.problems}


def work_torch(path: str) -> dict:
    import torch
    from safetensors.torch import load_file
    t0 = time.perf_counter()
    sd = load_file(path)
    stats = {}
    for k, v in sd.items():
        x = v.float()
        fin = torch.isfinite(x)
        nonfinite = int((~fin).sum())
        xa = torch.where(fin, x, torch.zeros((), dtype=x.dtype)).abs() if nonfinite else x.abs()
        stats[k] = (nonfinite, float(xa.max()) if xa.numel() else 0.0,
                    float(torch.linalg.vector_norm(xa)), float(xa.mean()) if xa.numel() else 0.0)
    total = 0.0
    for k in sd:
        if k.endswith(".lora_down.weight"):
            name = k[: -len(".lora_down.weight")]
            a = sd[k].float().reshape(sd[k].shape[0], -1)
            b = sd[name + ".lora_up.weight"].float().reshape(-1, a.shape[0])
            alpha = float(sd[name + ".alpha"]) if name + ".alpha" in sd else a.shape[0]
            g = ((a @ a.T) * (b.T @ b)).sum()
            total += float(g.clamp(min=0).sqrt()) * alpha / a.shape[0]
    dt = time.perf_counter() - t0
    return {"seconds": dt, "modules": sum(1 for k in sd if k.endswith("lora_down.weight")),
            "check": total, "threads": torch.get_num_threads()}


def _hwm_mb() -> float:
    """Peak resident memory of this process image (VmHWM; unlike ru_maxrss it is not
    inherited from the parent across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    """CPU seconds of this process (its threads included) and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def worker(method: str, path: str) -> None:
    if method.startswith("lorascope"):
        import importlib
        import lorascope.ingest._tensorscan as ts
        importlib.import_module("lorascope.ingest.safetensors")   # imports before the baseline
        if method == "lorascope1":
            ts.SCAN_WORKERS = 1              # one thread: what the scan threads add
    else:
        import importlib
        import torch
        importlib.import_module("safetensors.torch")
        if method == "torch1":
            torch.set_num_threads(1)
    rss0 = _hwm_mb()
    c0 = _cpu()
    out = work_lorascope(path) if method.startswith("lorascope") else work_torch(path)
    out["cpu_seconds"] = _cpu() - c0
    out["peak_rss_mb"] = _hwm_mb()
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_after_imports_mb"] = rss0
    print(json.dumps(out))


def run_method(method: str, path: Path, root: Path | None = None) -> dict:
    env = dict(os.environ, BENCH_LORASCOPE_ROOT=str(root)) if root else None
    r = subprocess.run([sys.executable, __file__, "--worker", method, str(path)],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{method} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _timed(cmd: list[str], **kw) -> tuple[float, float]:
    """(wall, cpu) seconds of a fresh process running cmd (children's CPU included)."""
    c0 = os.times()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800, **kw)
    wall = time.perf_counter() - t0
    c1 = os.times()
    if r.returncode not in (0, 1):
        raise SystemExit(f"{cmd} failed ({r.returncode}): {r.stderr[-2000:]!r}")
    return wall, (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)


def _env(root: Path = ROOT) -> dict:
    """The CLI's environment: ``root``'s lorascope first, with its bytecode compiled and
    used, as after ``pip install`` (PYTHONDONTWRITEBYTECODE, set on some machines, would
    make every start compile the package again)."""
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(root) / "lorascope")],
                   env=env, stdout=subprocess.DEVNULL, check=False)
    return env


def _compiled_scan(root: Path = ROOT) -> str:
    """Whether ``root``'s lorascope scans with the compiled pass (built in place)."""
    r = subprocess.run([sys.executable, "-c", "import lorascope.ingest._tensorscan as t; "
                        "print('compiled' if getattr(t, 'KERNEL', None) else 'numpy')"],
                       env=_env(root), capture_output=True, text=True, cwd=root)
    return r.stdout.strip() or "unknown"


def _best(runs: list[tuple[float, float]]) -> dict:
    walls = [w for w, _ in runs]
    best = min(range(len(runs)), key=lambda i: walls[i])
    return {"wall": walls[best], "cpu": runs[best][1], "all": walls}


def inspect_cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "lorascope.cli", "inspect", str(path), "--format", "json"]


def work_inprocess(path: str) -> dict:
    """In a fresh process: the imports, then read_checkpoint timed (wall and CPU of this
    process and its threads)."""
    from lorascope.ingest.safetensors import read_checkpoint
    c0, t0 = time.process_time(), time.perf_counter()
    ck = read_checkpoint(Path(path), "bench.safetensors")
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "modules": len(ck.modules), "check": sum(m.norm or 0.0 for m in ck.modules),
            "problems": ck.problems}


def _rate(gb: float, r: dict) -> str:
    return f"{gb / r['wall']:.2f} GB/s ({r['wall']:.3f} s; runs {', '.join(f'{x:.3f}' for x in r['all'])})"


def matrix(a) -> None:
    env = _env()
    base_env = _env(a.baseline) if a.baseline else None
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as td:
        tiny = Path(td) / "tiny.safetensors"
        write_uniform(tiny, 1, 4, "f16")
        warm(tiny)
        _timed(inspect_cmd(tiny), env=env, cwd=td)
        start = _best([_timed(inspect_cmd(tiny), env=env, cwd=td) for _ in range(max(3, a.repeat))])
        print(f"scan: {_compiled_scan()} here" + (f", {_compiled_scan(a.baseline)} in the baseline"
                                                  if a.baseline else ""))
        print(f"{os.cpu_count()} CPUs; start-up, `lorascope inspect` on a one-layer file: "
              f"{start['wall']:.3f} s (cpu {start['cpu']:.2f}; runs {', '.join(f'{x:.3f}' for x in start['all'])})")
        print(f"{'file':<16} {'layers':>6} {'GB':>5} {'load':>4} | {'cache GB/s':>10} | "
              f"{'scan GB/s':>9} {'s':>6} {'cpu':>5} | {'CLI GB/s':>8} {'s':>6} {'cpu':>5} | CLI runs (s)")
        for dtype in a.dtypes.split(","):
            for rank in (int(r) for r in a.ranks.split(",")):
                path = Path(td) / f"r{rank}-{dtype}.safetensors"
                layers = write_uniform(path, int(a.size_gb * 1e9), rank, dtype)
                size = path.stat().st_size
                warm(path)
                load = os.getloadavg()[0]
                cache = _best([_timed(["cat", str(path)]) for _ in range(a.repeat)])
                runs, old_runs, clis, old_clis = [], [], [], []
                for _ in range(a.repeat):       # alternating with the baseline, if any
                    runs.append(run_method("inprocess", path))
                    if a.baseline:
                        old_runs.append(run_method("inprocess", path, a.baseline))
                for _ in range(a.repeat):
                    clis.append(_timed(inspect_cmd(path), env=env, cwd=td))
                    if a.baseline:
                        old_clis.append(_timed(inspect_cmd(path), env=base_env, cwd=td))
                scan = min(runs, key=lambda r: r["wall"])
                scan["all"] = [r["wall"] for r in runs]
                cli = _best(clis)
                gb = size / 1e9
                name = f"r{rank} {dtype.upper()}" + (" (many)" if (rank, dtype) == (16, "f16") else "")
                print(f"{name:<16} {layers:>6} {gb:>5.2f} {load:>4.1f} | {gb / cache['wall']:>10.1f} | "
                      f"{gb / scan['wall']:>9.2f} {scan['wall']:>6.3f} {scan['cpu']:>5.2f} | "
                      f"{gb / cli['wall']:>8.2f} {cli['wall']:>6.3f} {cli['cpu']:>5.2f} | "
                      f"{', '.join(f'{x:.3f}' for x in cli['all'])}  (scan runs "
                      f"{', '.join(f'{x:.3f}' for x in scan['all'])})", flush=True)
                if scan["problems"]:
                    print(f"   problems: {scan['problems']}")
                row = {"file": name, "layers": layers, "bytes": size, "cache": cache,
                       "scan": scan, "cli": cli, "load": load}
                if a.baseline:
                    old = min(old_runs, key=lambda r: r["wall"])
                    old["all"] = [r["wall"] for r in old_runs]
                    old_cli = _best(old_clis)
                    print(f"   baseline: scan {_rate(gb, old)}, CLI {_rate(gb, old_cli)}; "
                          f"sums of layer norms {scan['check']:.7g} here, {old['check']:.7g} there",
                          flush=True)
                    row.update(baseline_scan=old, baseline_cli=old_cli)
                rows.append(row)
                path.unlink()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"startup": start, "files": rows}, indent=1))


def torch_compare(a) -> None:
    global RANK
    RANK = a.rank
    with tempfile.TemporaryDirectory(dir=a.dir) as td:
        path = Path(td) / f"bench-{a.dtype}.safetensors"
        t0 = time.perf_counter()
        size, mods = write_file(path, a.size_gb, a.dtype)
        print(f"wrote {path.name}: {size / 1e9:.2f} GB, {mods} LoRA layers (rank {RANK}, "
              f"{a.dtype.upper()} + F32 alpha) in {time.perf_counter() - t0:.1f}s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        warm(path)
        results = {}
        for method in a.methods.split(","):
            runs = [run_method(method, path) for _ in range(a.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
            results[method] = best
        print(f"{'method':<10} {'wall s':>7} {'GB/s':>6} {'cpu s':>6} {'peak RSS MB':>12} "
              f"{'after imports':>14}  wall s of each run")
        for m, r in results.items():
            print(f"{m:<10} {r['seconds']:>7.2f} {size / 1e9 / r['seconds']:>6.2f} {r['cpu_seconds']:>6.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['rss_after_imports_mb']:>14.0f}  {r['all_seconds']}")
        checks = {m: r["check"] for m, r in results.items()}
        print("sum of effective norms: " + ", ".join(f"{m} {v:.6g}" for m, v in checks.items()))
        print(f"load average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=("matrix", "torch"), default="matrix")
    ap.add_argument("--size-gb", type=float, default=None,
                    help="file size (matrix: 1.0737 = 1 GiB; torch: 1.0)")
    ap.add_argument("--ranks", default="4,16,64,256")
    ap.add_argument("--dtypes", default="f16,bf16,f32")
    ap.add_argument("--dtype", choices=("bf16", "f16"), default="bf16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", default=None, help="matrix: also write the numbers here")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="matrix: also time the lorascope checkout in this folder")
    ap.add_argument("--methods", default="lorascope,torch,torch1")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"))
    a = ap.parse_args()
    if a.worker:
        if a.worker[0] == "inprocess":
            print(json.dumps(work_inprocess(a.worker[1])))
        else:
            worker(*a.worker)
        return
    if a.mode == "matrix":
        a.size_gb = a.size_gb or 1.0737
        matrix(a)
    else:
        a.size_gb = a.size_gb or 1.0
        torch_compare(a)


if __name__ == "__main__":
    main()
