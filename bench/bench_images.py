"""Image-scan benchmark: lorascope's dataset check vs a plain Pillow loop.

Builds N small real images with Pillow in a temporary directory (mostly JPEG, some PNG,
a few truncated, one black), then times, in this one process run:

* ``pillow loop``   - one process, ``Image.open(p).load()`` per file (full decode);
* ``lorascope -j1`` - ``load_image_dataset`` in one process (draft-mode JPEG decode,
  degenerate checks, manifest/caption handling);
* ``lorascope``     - the same with the default process pool (``os.cpu_count()`` workers).

    .venv/bin/python bench/bench_images.py            # 10,000 images
    .venv/bin/python bench/bench_images.py -n 2000 --size 768
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lorascope.ingest.dataset import load_image_dataset  # noqa: E402


def build(root: Path, n: int, size: int, png_every: int, cut_every: int) -> tuple[int, int]:
    """Write n images; returns (pngs, truncated).  32 distinct pictures are encoded with
    Pillow once per format and their bytes reused, so building stays cheap."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jpgs, pngs_b = [], []
    for k in range(32):        # smooth pictures with texture: they compress like photos
        r, g, b = rng.random(3)
        img = np.stack([np.sin((xx * (k % 8 + 1) + r) * 6.28) * 80 + 128,
                        np.cos((yy * (k // 8 + 2) + g) * 6.28) * 80 + 128,
                        (xx + yy) * 60 + b * 60], axis=-1)
        img += rng.normal(0, 6, img.shape)
        im = Image.fromarray(np.clip(img, 0, 255).astype("uint8"))
        for fmt, out, kw in (("JPEG", jpgs, {"quality": 88}), ("PNG", pngs_b, {"compress_level": 1})):
            buf = io.BytesIO()
            im.save(buf, fmt, **kw)
            out.append(buf.getvalue())
    pngs = cuts = 0
    rows = ["file_name,text"]
    for i in range(n):
        if i % png_every == png_every - 1:
            name, data = f"{i:05d}.png", pngs_b[i % 32]
            pngs += 1
        else:
            name, data = f"{i:05d}.jpg", jpgs[i % 32]
        if i % cut_every == cut_every // 2:
            data = data[: len(data) * 2 // 3]
            cuts += 1
        (root / name).write_bytes(data)
        rows.append(f"{name},picture {i} of a textured gradient, variant {i % 32}")
    Image.new("RGB", (size, size)).save(root / "black.png")
    rows.append("black.png,black frame")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return pngs, cuts


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the scan's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def pillow_loop(root: Path) -> tuple[int, int]:
    ok = bad = 0
    for p in sorted(root.iterdir()):
        if p.suffix not in (".jpg", ".png"):
            continue
        try:
            with Image.open(p) as im:
                im.load()
            ok += 1
        except Exception:  # noqa: BLE001
            bad += 1
    return ok, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="images (default 10000)")
    ap.add_argument("--size", type=int, default=512, help="side in pixels (default 512)")
    ap.add_argument("--png-every", type=int, default=10, help="every k-th image is a PNG")
    ap.add_argument("--cut-every", type=int, default=500, help="every k-th image is truncated")
    ap.add_argument("--repeat", type=int, default=2, help="timing rounds; best kept")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lorascope-bench-images-"))
    try:
        t0 = time.perf_counter()
        pngs, cuts = build(tmp, args.n, args.size, args.png_every, args.cut_every)
        n = args.n + 1
        print(f"built {n} images ({args.size}x{args.size}; {pngs + 1} PNG, {cuts} truncated, "
              f"1 black) in {time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs")

        best: dict[str, tuple[float, float]] = {}
        found = {}

        def timed(label, fn):
            c0, w0 = cpu_seconds(), time.perf_counter()
            res = fn()
            w, c = time.perf_counter() - w0, cpu_seconds() - c0
            old = best.get(label)
            best[label] = (w, c) if old is None or w < old[0] else old
            return res

        for _round in range(args.repeat):       # interleaved rounds; the best wall time of each
            _ok, bad = timed("pillow loop", lambda: pillow_loop(tmp))
            for label, jobs in (("lorascope -j1", 1), ("lorascope", None)):
                ds, _src = timed(label, lambda: load_image_dataset(tmp, tmp, jobs=jobs))
                found[label] = (sum(1 for it in ds.items if it.error),
                                sum(1 for it in ds.items if it.degenerate))
        t_pil, c_pil = best["pillow loop"]
        print(f"{'':<15} {'wall':>8} {'images/s':>9} {'CPU':>8} {'CPU ms/img':>10}")
        print(f"{'pillow loop':<15} {t_pil:7.2f}s {n / t_pil:9.0f} {c_pil:7.2f}s "
              f"{1000 * c_pil / n:10.2f}   (open + load(), one process; {bad} failed)")
        for label, (errors, blank) in found.items():
            dt, c = best[label]
            print(f"{label:<15} {dt:7.2f}s {n / dt:9.0f} {c:7.2f}s {1000 * c / n:10.2f}   "
                  f"({errors} corrupt, {blank} degenerate found; wall {t_pil / dt:.2f}x, "
                  f"CPU {c_pil / c:.2f}x the pillow loop)")
            assert errors == cuts and blank == 1, (label, errors, cuts, blank)
        load = os.getloadavg()[0]
        print(f"load average during the run: {load:.1f} on {os.cpu_count()} CPUs"
              + ("  (machine busy: compare the CPU columns)" if load > (os.cpu_count() or 1) else ""))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
