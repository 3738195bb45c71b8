"""Files that change while they are read: an adapter that a trainer is still writing
shrinks under the scan (a memory-mapped read of it would die of SIGBUS), with one scan
thread and with several; and a large adapter under a memory limit smaller than the file
is read in full."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hostile.util import MEM_LIMIT, base_run, strict_json

pytestmark = pytest.mark.timeout(300)

# The CLI, with the scan's reads wrapped so that the second one first cuts the file to a
# tenth of its size: a trainer truncating the adapter it is about to rewrite, right in
# the middle of lorascope's scan.  Everything else is the real command line.
SHRINK = r"""
import os, sys
import lorascope.ingest._tensorscan as ts
target, workers = os.environ["SHRINK_FILE"], int(os.environ["SHRINK_WORKERS"])
if workers > 1:
    ts.PARALLEL_MIN_BYTES = 0
    ts._cpus = lambda: workers
ts.BATCH = 1 << 14                     # many reads, so that the second one comes mid-scan
real, reads = ts.Scanner.read, []
def read(*a, **k):
    reads.append(1)
    if len(reads) == 2 and os.path.getsize(target) > 4096:
        os.truncate(target, os.path.getsize(target) // 10)
    return real(*a, **k)
ts.Scanner.read = read
from lorascope.cli import main
sys.argv = ["lorascope"] + sys.argv[1:]
main()
"""


def adapter(path, layers: int = 64, dim: int = 1024, rank: int = 32):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(3)
    t = {}
    for i in range(layers):
        t[f"lora_unet_b{i}.lora_down.weight"] = rng.standard_normal((rank, dim)).astype(np.float16)
        t[f"lora_unet_b{i}.lora_up.weight"] = rng.standard_normal((dim, rank)).astype(np.float16)
    save_file(t, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": "16"})
    return path


def run_shrinking(args, *, target, workers: int, cwd):
    env = dict(os.environ, SHRINK_FILE=str(target), SHRINK_WORKERS=str(workers))
    env.pop("LORASCOPE_STRICT", None)
    return subprocess.run([sys.executable, "-c", SHRINK, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("workers", [1, 3])
def test_an_adapter_that_shrinks_while_scanned(tmp_path, workers):
    f = adapter(tmp_path / "lora.safetensors")
    r = run_shrinking(["inspect", f, "--format", "json"], target=f, workers=workers, cwd=tmp_path)
    assert r.returncode >= 0, f"killed by signal {-r.returncode} (SIGBUS is 7): {r.stderr[-500:]}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    probs = " ".join(doc["files"][0]["problems"])
    assert "shrinking while read" in probs or "truncated" in probs, doc["files"][0]["problems"]


def test_a_run_whose_adapter_shrinks_is_still_analysed(tmp_path):
    run = base_run(tmp_path / "run")
    f = adapter(run / "last.safetensors")
    r = run_shrinking(["analyze", run, "--format", "json", "--no-html"], target=f, workers=3, cwd=tmp_path)
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-1000:])
    doc = strict_json(r.stdout)
    assert doc["run"]["steps"]["last"] == 40
    src = next(s for s in doc["run"]["sources"] if s["path"] == "last.safetensors")
    assert src["problems"], src


def test_an_adapter_larger_than_the_memory_limit_is_read_in_full(tmp_path):
    """Under a memory limit smaller than the adapter, the scan (threads reading into
    their own buffers, nothing mapped) reads it in full, without a word on stderr."""
    from safetensors import serialize_file
    size = MEM_LIMIT + (256 << 20)                       # more than the address space allowed
    rows = 4096
    cols = 64
    n_layers = size // (2 * rows * cols * 2)
    f = tmp_path / "big.safetensors"
    zeros = np.zeros(rows * cols, np.float16)             # one buffer for every tensor: sparse file
    from safetensors import TensorSpec
    specs = {}
    for i in range(n_layers):
        for suf, shape in ((".lora_down.weight", (cols, rows)), (".lora_up.weight", (rows, cols))):
            specs[f"lora_unet_b{i}{suf}"] = TensorSpec(dtype="float16", shape=shape, data_ptr=zeros.ctypes.data,
                                                        data_len=zeros.nbytes)
    serialize_file(specs, str(f))
    assert f.stat().st_size > MEM_LIMIT
    env = dict(os.environ)
    env.pop("LORASCOPE_STRICT", None)
    from hostile.util import _limit_memory
    r = subprocess.run([sys.executable, "-m", "lorascope.cli", "inspect", str(f), "--format", "json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
                       preexec_fn=_limit_memory)
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    entry = doc["files"][0]
    assert entry["problems"] == [] and len(entry["modules"]) == n_layers, entry["problems"]
    assert all(m["zero"] for m in entry["modules"])
