"""Checkpoint scan benchmark: lorascope's safetensors reader vs torch.

Writes a LoRA-shaped safetensors file of about --size-gb (default 1 GB) with the
``safetensors`` package (down/up pairs in BF16 or F16, alphas in F32, kohya key names),
reads it once to warm the page cache, then times, each in a fresh subprocess so that
its peak RSS (ru_maxrss) is its own:

* ``lorascope``: ``lorascope.ingest.safetensors.read_checkpoint`` (header checks,
  per-tensor stats and exact effective-update norms, numpy only); ``lorascope1``: the
  same in one process (no forked scan workers);
* ``torch`` / ``torch1``: ``safetensors.torch.load_file`` + per-tensor stats in torch
  (non-finite count, abs max, norm and mean |w| of finite elements) + the same
  Gram-matrix effective norms; torch with its default threads / with one thread.

Peak memory is VmHWM of the worker (ru_maxrss is reported too, but Linux carries it over
from the parent across fork + exec). Wall and CPU seconds are both printed: on a shared
machine the CPU seconds tell more.

Usage: python bench/bench_ckpt.py [--size-gb 1.0] [--dtype bf16|f16] [--rank 64] [--repeat 3]
       [--dir DIR] [--methods lorascope,lorascope1,torch,torch1]
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
    """CPU seconds of this process and its finished children (lorascope's scan workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def worker(method: str, path: str) -> None:
    if method.startswith("lorascope"):
        import lorascope.ingest._tensorscan as ts
        import lorascope.ingest.safetensors  # noqa: F401  (imports before the baseline)
        if method == "lorascope1":
            ts.SCAN_WORKERS = 1              # one process: what the worker processes add
    else:
        import torch
        import safetensors.torch  # noqa: F401
        if method == "torch1":
            torch.set_num_threads(1)
    rss0 = _hwm_mb()
    c0 = _cpu()
    out = work_lorascope(path) if method.startswith("lorascope") else work_torch(path)
    out["cpu_seconds"] = _cpu() - c0
    out["peak_rss_mb"] = _hwm_mb()
    # forked scan workers (lorascope on Linux): the largest one's peak; its pages shared
    # with this process (imports, copy-on-write) are counted in both
    out["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_after_imports_mb"] = rss0
    print(json.dumps(out))


def run_method(method: str, path: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", method, str(path)],
                       capture_output=True, text=True, timeout=1800,
                       cwd=Path(__file__).resolve().parents[1])
    if r.returncode != 0:
        raise SystemExit(f"{method} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    global RANK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--dtype", choices=("bf16", "f16"), default="bf16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--methods", default="lorascope,torch,torch1")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"))
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return
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
              f"{'after imports':>14} {'workers MB':>11}  wall s of each run")
        for m, r in results.items():
            print(f"{m:<10} {r['seconds']:>7.2f} {size / 1e9 / r['seconds']:>6.2f} {r['cpu_seconds']:>6.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['rss_after_imports_mb']:>14.0f} "
                  f"{r['workers_peak_rss_mb']:>11.0f}  {r['all_seconds']}")
        checks = {m: r["check"] for m, r in results.items()}
        print("sum of effective norms: " + ", ".join(f"{m} {v:.6g}" for m, v in checks.items()))
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
