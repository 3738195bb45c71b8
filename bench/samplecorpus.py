"""Generated sample-image timelines with known truth (for bench_samples.py and the tests).

A *case* is what one SD run leaves: a set of training images and, for each prompt (and
seed), its samples at every sample step.  Pictures are procedural scenes (a two-colour
gradient, 2-5 filled shapes, a blotchy texture, a little blur) rendered with Pillow and
numpy at the case's size; the training images and the healthy samples are drawn from the
same palette and shape vocabulary, so healthy samples look like the training set without
copying it (the hard negatives of memorisation).

Families (``FAMILIES``), each with its truth (the rule that must fire, and its step):

* ``healthy``: each prompt's picture changes most in its first interval (the LoRA's style
  arriving: new colours, shapes moved) and then drifts slowly (positions, sizes, colours);
  some cases give two prompts the same layout in different colours;
* ``healthy_random_seed``: no fixed seed: every sample is a new picture (kohya without --d);
* ``memorize``: from a known step, some prompts' samples turn, over 1-3 sample steps, into
  training images as a diffusion model reproduces them: shifted up to 4% of the side,
  blurred, colour-jittered (brightness +-10%, each channel +-8%), noised;
* ``collapse``: from a known step, the prompts' samples turn into one picture (each with its
  own small noise and jitter);
* ``broken``: from a known step every sample is black, one flat colour, uniform noise or a
  truncated PNG file;
* ``drift``: at a known step most prompts jump to a new picture, then drift slowly again.

``make_case(family, seed, size, prompts, steps)`` is deterministic.
"""
from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import make_sd  # noqa: E402  (its shapes: circle, square, triangle, star)

FAMILIES = ("healthy", "healthy_random_seed", "memorize", "collapse", "broken", "drift")
TRUTH = {"memorize": "sample.memorized", "collapse": "sample.collapse", "broken": "sample.broken",
         "drift": "sample.drift"}
SHAPES = make_sd.SHAPES


@dataclass
class Case:
    family: str
    size: int
    train: list[Image.Image]
    # strips[k][i]: the i-th sample of prompt k (a PIL image, or bytes for a broken file)
    strips: list[list]
    steps: list[int]
    truth_rule: str | None = None
    truth_step: int | None = None
    notes: dict = field(default_factory=dict)


# -- scenes ------------------------------------------------------------------------------

def _palette(rng) -> np.ndarray:
    return rng.integers(20, 236, size=(6, 3)).astype(np.float64)


def random_scene(rng, pal: np.ndarray) -> dict:
    n = int(rng.integers(2, 6))
    return {
        "bg0": pal[rng.integers(len(pal))] + rng.normal(0, 12, 3),
        "bg1": pal[rng.integers(len(pal))] + rng.normal(0, 12, 3),
        "angle": float(rng.uniform(0, 2 * math.pi)),
        "shapes": [{"kind": SHAPES[int(rng.integers(len(SHAPES)))],
                    "c": pal[rng.integers(len(pal))] + rng.normal(0, 15, 3),
                    "x": float(rng.uniform(0.15, 0.85)), "y": float(rng.uniform(0.15, 0.85)),
                    "r": float(rng.uniform(0.08, 0.3))} for _ in range(n)],
        "tex": int(rng.integers(1 << 30)), "tex_amp": float(rng.uniform(4, 22)),
    }


def evolve(sc: dict, rng, amount: float) -> dict:
    """A scene moved a little: amount 1 is one step of a healthy timeline."""
    out = dict(sc)
    out["bg0"] = sc["bg0"] + rng.normal(0, 2.5 * amount, 3)
    out["bg1"] = sc["bg1"] + rng.normal(0, 2.5 * amount, 3)
    out["angle"] = sc["angle"] + float(rng.normal(0, 0.03 * amount))
    out["shapes"] = [dict(s, c=s["c"] + rng.normal(0, 3 * amount, 3),
                          x=s["x"] + float(rng.normal(0, 0.008 * amount)),
                          y=s["y"] + float(rng.normal(0, 0.008 * amount)),
                          r=max(0.04, s["r"] * (1 + float(rng.normal(0, 0.02 * amount)))))
                     for s in sc["shapes"]]
    return out


def restyle(sc: dict, rng, pal: np.ndarray) -> dict:
    """The first interval: the LoRA's style arrives (colours change, shapes move)."""
    out = evolve(sc, rng, 4.0)
    out["bg0"] = 0.5 * out["bg0"] + 0.5 * pal[rng.integers(len(pal))]
    out["shapes"] = [dict(s, c=0.4 * s["c"] + 0.6 * pal[rng.integers(len(pal))],
                          x=s["x"] + float(rng.normal(0, 0.05)), y=s["y"] + float(rng.normal(0, 0.05)))
                     for s in out["shapes"]]
    return out


def render(sc: dict, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    t = (np.cos(sc["angle"]) * (xx - 0.5) + np.sin(sc["angle"]) * (yy - 0.5)) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    arr = (1 - t) * sc["bg0"] + t * sc["bg1"]
    trng = np.random.default_rng(sc["tex"])
    field_ = trng.normal(0, 1, (8, 8)).astype(np.float32)
    tex = np.asarray(Image.fromarray(field_).resize((size, size), Image.BICUBIC), dtype=np.float64)
    arr = arr + sc["tex_amp"] * tex[..., None]
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for s in sc["shapes"]:
        cx, cy, r = s["x"] * size, s["y"] * size, s["r"] * size
        fill = tuple(int(v) for v in np.clip(s["c"], 0, 255))
        make_sd._draw_shape(d, s["kind"], tuple(int(round(v)) for v in (cx - r, cy - r, cx + r, cy + r)),
                            fill)
    return im.filter(ImageFilter.GaussianBlur(max(0.3, size / 512)))


def model_noise(im: Image.Image, rng, sigma: float = 2.5) -> Image.Image:
    a = np.asarray(im, dtype=np.float64) + rng.normal(0, sigma, (im.height, im.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def reproduce(im: Image.Image, rng) -> Image.Image:
    """What a diffusion model makes of a training image it memorised: shifted (up to 4%
    of the side), blurred, colour-jittered, noised."""
    size = im.width
    dx, dy = (int(round(v)) for v in rng.uniform(-0.04, 0.04, 2) * size)
    a = np.asarray(im, dtype=np.float64)
    a = np.roll(np.roll(a, dy, axis=0), dx, axis=1)
    out = Image.fromarray(a.astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)) * size / 256))
    a = np.asarray(out, dtype=np.float64)
    a = a * float(rng.uniform(0.9, 1.1)) * rng.uniform(0.92, 1.08, 3) + rng.normal(0, rng.uniform(3, 9), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def blend(a: Image.Image, b: Image.Image, t: float) -> Image.Image:
    return Image.blend(a, b, float(t))


def broken(mode: str, size: int, rng):
    if mode == "black":
        return Image.fromarray(rng.integers(0, 5, (size, size, 3)).astype(np.uint8))
    if mode == "constant":
        return Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    if mode == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8))
    buf = io.BytesIO()               # a truncated file: the writer died mid-image
    render(random_scene(rng, _palette(rng)), size).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 3]


# -- cases -------------------------------------------------------------------------------

def make_case(family: str, seed: int, size: int = 128, prompts: int = 4, steps: int = 10,
              n_train: int = 16) -> Case:
    rng = np.random.default_rng(seed)
    pal = _palette(rng)
    train_sc = [random_scene(rng, pal) for _ in range(n_train)]
    train = [render(s, size) for s in train_sc]
    step_list = [k * 100 for k in range(steps)]          # sample_at_first, then every 100
    case = Case(family, size, train, [], step_list)
    onset = int(rng.integers(max(3, steps // 2), steps)) if steps >= 4 else steps - 1
    scenes = []
    for k in range(prompts):
        sc = random_scene(rng, pal)
        if family == "healthy" and k == 1 and rng.random() < 0.5:
            # same layout as prompt 0, other colours (a hard negative for collapse)
            sc = dict(scenes[0], bg0=pal[rng.integers(len(pal))], bg1=pal[rng.integers(len(pal))],
                      shapes=[dict(s, c=pal[rng.integers(len(pal))]) for s in scenes[0]["shapes"]])
        scenes.append(sc)
    target = random_scene(rng, pal)                      # collapse target
    mode = ["black", "constant", "noise", "unreadable"][seed % 4]
    memo = sorted(rng.choice(prompts, size=int(rng.integers(1, prompts + 1)), replace=False).tolist())
    drifting = sorted(rng.choice(prompts, size=max(1, int(math.ceil(prompts * rng.uniform(0.6, 1.0)))),
                                 replace=False).tolist())
    ramp = int(rng.integers(1, 4))                       # sample steps a transition takes
    copies = rng.permutation(n_train)                    # each prompt copies its own image
    for k in range(prompts):
        sc = scenes[k]
        strip = []
        copy_of = train[int(copies[k % n_train])]
        for i, _st in enumerate(step_list):
            if i == 1:
                sc = restyle(sc, rng, pal)
            elif i > 1:
                sc = evolve(sc, rng, 1.0)
            if family == "healthy_random_seed":
                pic = model_noise(render(random_scene(rng, pal), size), rng)
            elif family == "drift" and k in drifting and i == onset:
                sc = random_scene(rng, pal)
                pic = model_noise(render(sc, size), rng)
            else:
                pic = model_noise(render(sc, size), rng)
            if family == "memorize" and k in memo and i >= onset - ramp + 1:
                t = min(1.0, (i - onset + ramp) / ramp)
                pic = blend(pic, reproduce(copy_of, rng), t)
            if family == "collapse" and i >= onset - ramp + 1:
                t = min(1.0, (i - onset + ramp) / ramp)
                pic = blend(pic, model_noise(evolve_pic(target, rng, size), rng), t)
            if family == "broken" and i >= onset:
                pic = broken(mode, size, rng)
            strip.append(pic)
        case.strips.append(strip)
    if family in TRUTH:
        case.truth_rule = TRUTH[family]
        case.truth_step = step_list[onset]
    case.notes = {"memorizing": memo if family == "memorize" else [], "broken_mode": mode,
                  "drifting": drifting if family == "drift" else [], "ramp": ramp}
    return case


def evolve_pic(sc: dict, rng, size: int) -> Image.Image:
    """The collapse target as one prompt draws it: the same picture, a little jitter."""
    return render(evolve(sc, rng, 0.5), size)
