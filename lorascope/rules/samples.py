"""`sample.*`: what the model drew while it trained.

These rules read ``run.samples`` (decoded once by :mod:`lorascope.ingest.samples`), one
timeline per prompt and seed (:func:`lorascope.imagesim.strips`), and for memorisation
the signatures of the training images in ``run.datasets``.  Every finding lists the
sample files it is about (capped at ``max_files``) and, in ``extra``, what the HTML
report outlines: ``flagged`` (sample files) and, for memorisation, ``pairs`` (sample
file, training image file).
"""
from __future__ import annotations

from statistics import median

from lorascope import imagesim
from lorascope.model import Finding, Run, SampleImage
from lorascope.rules.registry import Params, rule


def _cap(files: list[str], limit: int) -> tuple[list[str], list[str]]:
    files = list(dict.fromkeys(f for f in files if f))
    if len(files) <= limit:
        return files, []
    return files[:limit], [f"and {len(files) - limit} more files"]


def _quote(text: str | None, n: int = 60) -> str:
    if not text:
        return ""
    t = " ".join(text.split())
    return f" “{t[:n - 1]}…”" if len(t) > n else f" “{t}”"


def _broken_kind(s: SampleImage, noise_max: float, first_noisy: bool) -> str | None:
    if s.error:
        return "unreadable"
    if s.blank:
        return s.blank
    if s.noise is not None and s.noise < noise_max and not first_noisy:
        return "noise"
    return None


def _usable(s: SampleImage, noise_max: float) -> bool:
    return (s.signature is not None and not s.error and not s.blank
            and (s.noise is None or s.noise >= noise_max))


def _noise_max(p: Params) -> float:
    """sample.broken's noise threshold: the other rules leave out what it calls broken."""
    cat = p.context.catalog if p.context is not None else {}
    return float(cat.get("sample.broken", {}).get("params", {}).get("max_noise_corr", 0.15))


def _before(run: Run, step: int) -> str | None:
    ck = [c for c in run.checkpoints if c.step is not None and c.step < step]
    if not ck:
        return None
    c = max(ck, key=lambda c: c.step)
    return f"the last checkpoint saved before it: {c.path} (step {c.step})"


@rule("sample.broken", needs=("samples",))
def sample_broken(run: Run, p: Params) -> list[Finding]:
    """Sample images turn black, flat, pure noise or unreadable: the model broke.

    ## What it detects
    The sample images a run generated (kohya / lora-scripts `sample/`, ai-toolkit
    `samples/`, TensorBoard images) that are all black, all white, of one colour, pure
    noise where the prompt's first sample was a picture, or that do not decode. The
    step is the first sample step at which at least `min_fraction` of the samples are
    broken; the model broke between the sample step before it and that step.

    ## Why it matters
    A model whose weights went NaN or blew up draws black or static for every prompt from
    then on, and every checkpoint saved after that is useless. Sample images often show
    it before anyone looks at the loss (kohya logs no eval loss), and they name the
    interval in which it happened. With `loss.nonfinite` in the same run, the NaN is the
    cause; diagnose links them.

    ## Example
    `sample/shapesdemo_000100_00_…_42.png` shows a red circle; from
    `shapesdemo_000200_00_…_42.png` on all four prompts give pure black images, while
    `loss/current` is NaN from step 6.

    ## Fix
    Use a checkpoint saved before the break; then treat the curve finding it agrees with
    (a NaN or a blow-up: lower the learning rate, clip gradients, remove the blank or
    corrupt training image). Unreadable sample files alone point at the disk or a killed
    writer, not the model.
    """
    noise_max = p["max_noise_corr"]
    strips = imagesim.strips(run.samples)
    kinds: dict[int, str] = {}
    by_step: dict[int, list[SampleImage]] = {}
    for st in strips:
        first = st.samples[0]
        first_noisy = first.noise is not None and first.noise < noise_max
        for s in st.samples:
            k = _broken_kind(s, noise_max, first_noisy)
            if k:
                kinds[id(s)] = k
            by_step.setdefault(s.step, []).append(s)
    if not kinds:
        return []
    steps = sorted(by_step)
    onset = next((st for st in steps
                  if sum(id(s) in kinds for s in by_step[st]) >= p["min_fraction"] * len(by_step[st])),
                 None)
    if onset is None:
        iso = [s for s in run.samples if kinds.get(id(s)) in ("unreadable", "black", "white", "constant")]
        if not iso:
            return []
        files, more = _cap([s.file for s in iso], p["max_files"])
        ev = [f"step {s.step}: {s.file} is {kinds[id(s)]}" + (f" ({s.error})" if s.error else "")
              for s in iso[:8]] + more
        return [p.finding(f"{len(iso)} of {len(run.samples)} sample images are blank or unreadable",
                          severity=p["isolated_severity"], step=iso[0].step, evidence=ev,
                          files=files, extra={"flagged": [s.file for s in iso]})]
    i = steps.index(onset)
    prev = steps[i - 1] if i else None
    at = by_step[onset]
    bad_at = [s for s in at if id(s) in kinds]
    what: dict[str, int] = {}
    for s in bad_at:
        what[kinds[id(s)]] = what.get(kinds[id(s)], 0) + 1
    desc = ", ".join(f"{n} {k}" for k, n in sorted(what.items(), key=lambda kv: -kv[1]))
    later = steps[i + 1:]
    still = [st for st in later if sum(id(s) in kinds for s in by_step[st]) >= p["min_fraction"] * len(by_step[st])]
    ev = [f"at step {onset}: {len(bad_at)} of {len(at)} samples broken ({desc})"]
    if prev is not None:
        ok_prev = sum(id(s) not in kinds for s in by_step[prev])
        ev.append(f"at step {prev}, the sample step before: {ok_prev} of {len(by_step[prev])} "
                  "samples were pictures")
    if later:
        ev.append(f"broken at {len(still)} of the {len(later)} sample steps after it"
                  + (f" (last: step {later[-1]})" if later else ""))
    for s in bad_at[:4]:
        ev.append(f"{s.file}: {kinds[id(s)]}" + (f" ({s.error})" if s.error else "")
                  + (f", noise score {s.noise:.2f}" if kinds[id(s)] == "noise" and s.noise is not None else ""))
    b = _before(run, onset)
    if b:
        ev.append(b)
    flagged = [s.file for s in run.samples if id(s) in kinds and s.step is not None and s.step >= onset]
    files, more = _cap(flagged, p["max_files"])
    where = f"between steps {prev} and {onset}" if prev is not None else f"by step {onset}"
    title = (f"The model broke {where}: {len(bad_at)} of {len(at)} samples at step {onset} are "
             f"{'/'.join(sorted(what))}" + (" and stay so" if later and len(still) == len(later) else ""))
    return [p.finding(title, step=onset, step_range=[prev if prev is not None else onset, onset],
                      evidence=ev + more, files=files, extra={"flagged": flagged})]


def _train_signatures(run: Run):
    files, sigs = [], []
    for ds in run.datasets:
        if ds.kind != "images":
            continue
        for it in ds.items:
            if it.signature is not None and it.file:
                files.append(it.file)
                sigs.append(it.signature)
    return files, sigs


@rule("sample.memorized", needs=("samples", "datasets"))
def sample_memorized(run: Run, p: Params) -> list[Finding]:
    """Late samples are near-copies of training images, early ones were not.

    ## What it detects
    A prompt's sample that reproduces one of the training images the config names (the
    run's dataset): the same picture up to the small changes a diffusion model makes
    (a shift of a few percent, blur, a colour cast, noise), found by the correlation of
    32x32 copies allowing small offsets. It counts when the sample is among the last
    `late_fraction` of that prompt's sample steps and the prompt's first sample was not a
    copy. The step is the first sample step at which a prompt copies.

    ## Why it matters
    The one overfitting signal an SD run has: kohya and lora-scripts rarely log an eval
    loss, and the training loss of a diffusion model keeps looking healthy while the LoRA
    learns its training pictures by heart (a watermark, a pose, a background) instead of
    the concept. Such a LoRA reproduces its data instead of following new prompts.

    ## Example
    The sample of "shapesdemo, a green star" with seed 7 shows a new star at step 120 and
    `dataset/image_013.png` (shifted 3 px, slightly blurred) from step 240 on.

    ## Fix
    Use the checkpoint saved before the onset; train fewer epochs or steps (fewer repeats),
    lower the rank or the learning rate, add varied images and captions that describe what
    changes between them.
    """
    tfiles, tsigs = _train_signatures(run)
    if not tsigs:
        return []
    noise_max = _noise_max(p)
    strips = [st for st in imagesim.strips(run.samples) if len(st.samples) >= 2]
    usable = [x for st in strips for x in st.samples if _usable(x, noise_max)]
    best: dict[int, tuple[int, float]] = {}      # id(sample) -> (training image, correlation)
    for i, j, c in imagesim.near_pairs([x.signature for x in usable], tsigs, p["min_correlation"]):
        k = id(usable[i])
        if k not in best or c > best[k][1]:
            best[k] = (j, c)
    hits = []          # (strip, onset sample, (train index, correlation))
    for st in strips:
        first = st.samples[0]
        if first.step is None or id(first) in best:
            continue
        lo, hi = first.step, st.samples[-1].step
        late_from = hi - p["late_fraction"] * (hi - lo)
        copies = [x for x in st.samples[1:] if id(x) in best]
        if not copies or not any(x.step >= late_from for x in copies):
            continue
        hits.append((st, copies[0], best[id(copies[0])], copies))
    if len(hits) < p["min_strips"]:
        return []
    hits.sort(key=lambda h: h[1].step)
    onset = hits[0][1].step
    ev = []
    for st, x, (j, corr), copies in hits[:10]:
        ev.append(f"{st.label}{_quote(st.prompt)}: the sample at step {x.step} ({x.file}) is a "
                  f"near-copy of {tfiles[j]} (correlation {corr:.2f}); {len(copies)} of its "
                  f"{len(st.samples)} samples copy, its first (step {st.samples[0].step}) did not")
    if len(hits) > 10:
        ev.append(f"{len(hits) - 10} more prompts copy training images")
    pairs = [[x.file, tfiles[best[id(x)][0]]] for _, _, _, copies in hits for x in copies]
    b = _before(run, onset)
    if b:
        ev.append(b)
    files, more = _cap([a for a, _ in pairs] + [t for _, t in pairs], p["max_files"])
    n = len(strips)
    title = (f"Samples reproduce training images from step {onset}: {len(hits)} of {n} "
             f"prompt{'s' if n != 1 else ''} draw near-copies of the dataset late in the run")
    return [p.finding(title, step=onset, step_range=[onset, max(h[3][-1].step for h in hits)],
                      evidence=ev + more, files=files,
                      extra={"flagged": [a for a, _ in pairs], "pairs": pairs})]


def _collapsed(samples: list[SampleImage], p: Params) -> tuple[float, list[list[SampleImage]]]:
    """Share of the samples with a near-identical partner, and the groups of them."""
    n = len(samples)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, j, _c in imagesim.near_pairs([s.signature for s in samples], [s.signature for s in samples],
                                        p["min_correlation"], same=True):
        parent[find(i)] = find(j)
    groups: dict[int, list[SampleImage]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(samples[i])
    multi = [g for g in groups.values() if len(g) > 1]
    return (sum(len(g) for g in multi) / n if n else 0.0), multi


@rule("sample.collapse", needs=("samples",))
def sample_collapse(run: Run, p: Params) -> list[Finding]:
    """Different prompts or seeds give near-identical images late in the run.

    ## What it detects
    At each sample step, the samples of different prompts (or of one prompt with
    different seeds) that are near-identical to each other. The run collapsed when, at
    the last sample step, at least `min_fraction` of the samples have such a twin while
    at the first sample step fewer did. The step is the first sample step from which
    every later one is collapsed. Broken samples (`sample.broken`) are left out.

    ## Why it matters
    A LoRA that draws the same picture whatever the prompt has overfit to one image or
    one caption, or its weights have blown up into a single mode: it has lost what the
    base model could do, and more training makes it worse. The loss of a diffusion model
    does not show this.

    ## Example
    Four prompts ("a red circle", "a blue square", "a green star", "a cat") give four
    different images at step 100 and the same yellow triangle on grey from step 400 on.

    ## Fix
    Use the checkpoint saved before the onset; lower the learning rate, train fewer
    epochs, vary the training images and write captions that tell them apart.
    """
    noise_max = _noise_max(p)
    by_step: dict[int, list[SampleImage]] = {}
    for s in run.samples:
        if s.step is not None and _usable(s, noise_max):
            by_step.setdefault(s.step, []).append(s)
    steps = [st for st in sorted(by_step) if len(by_step[st]) >= p["min_strips"]]
    if len(steps) < 2:
        return []
    frac = {st: _collapsed(by_step[st], p) for st in steps}
    if frac[steps[-1]][0] < p["min_fraction"] or frac[steps[0]][0] >= p["min_fraction"]:
        return []
    onset = steps[-1]
    for st in reversed(steps):
        if frac[st][0] < p["min_fraction"]:
            break
        onset = st
    share, groups = frac[steps[-1]]
    last = by_step[steps[-1]]
    ev = [f"at step {steps[0]}: {frac[steps[0]][0]:.0%} of {len(by_step[steps[0]])} samples had a "
          "near-identical twin",
          f"at step {steps[-1]}: {share:.0%} of {len(last)} samples do"]
    for g in sorted(groups, key=len, reverse=True)[:3]:
        names = ", ".join(f"prompt {s.prompt_index}" if s.prompt_index is not None else (s.tag or s.file)
                          for s in g[:6])
        ev.append(f"near-identical at step {steps[-1]}: {names}" + (" …" if len(g) > 6 else "")
                  + _quote(g[0].prompt) + " and the others")
    b = _before(run, onset)
    if b:
        ev.append(b)
    flagged = [s.file for st in steps if st >= onset for g in frac[st][1] for s in g]
    files, more = _cap(flagged, p["max_files"])
    title = (f"Samples collapsed from step {onset}: {share:.0%} of the prompts/seeds give "
             f"near-identical images at step {steps[-1]}")
    return [p.finding(title, step=onset, step_range=[onset, steps[-1]], evidence=ev + more,
                      files=files, extra={"flagged": flagged})]


def _explained(run: Run, p: Params, noise_max: float):
    """sample -> whether the picture it jumped to is a training image (sample.memorized's
    thresholds) or another prompt's picture of that step (sample.collapse's): those rules
    report such a jump, drift does not repeat it."""
    cat = p.context.catalog if p.context is not None else {}
    mem = cat.get("sample.memorized", {}).get("params", {})
    col = cat.get("sample.collapse", {}).get("params", {})
    _, tsigs = _train_signatures(run)
    by_step: dict[int, list[SampleImage]] = {}
    for s in run.samples:
        if s.step is not None and _usable(s, noise_max):
            by_step.setdefault(s.step, []).append(s)

    tvec = imagesim.coarse(tsigs)

    def check(s: SampleImage) -> bool:
        if mem and imagesim.near_pairs([s.signature], tsigs, mem["min_correlation"], b_coarse=tvec):
            return True
        others = [o.signature for o in by_step.get(s.step, []) if o is not s]
        return bool(col and imagesim.near_pairs([s.signature], others, col["min_correlation"]))
    return check


@rule("sample.drift", needs=("samples",))
def sample_drift(run: Run, p: Params) -> list[Finding]:
    """The same prompt and seed change abruptly between two consecutive sample steps.

    ## What it detects
    For each prompt and seed, how much its sample changes from one sample step to the
    next. An interval is abrupt when the change is large (`min_change`), several times
    (`min_ratio`) the timeline's usual change, and does not land on, or lead within two
    more sample steps to, a training image or another prompt's picture (`sample.memorized`
    and `sample.collapse` report those); fires when at least `min_strip_fraction`
    of the timelines change abruptly over the same interval. The first interval of each
    timeline is not judged (the LoRA taking effect). Broken samples are left out.

    ## Why it matters
    With a fixed seed, training moves a sample gradually: a sudden new picture for most
    prompts at once means the model jumped somewhere between those two steps — the step
    range to look at next to the loss curve (a spike, a learning-rate restart, a bad
    batch), and the checkpoint before it the one to keep.

    ## Example
    Eight prompts with seed 42 drift slowly from step 200 to 1000, then all eight show a
    different composition at step 1200: the loss spiked at step 1130.

    ## Fix
    Look at the loss and learning rate between the two steps; keep the checkpoint before
    the jump. A spike there: lower the learning rate or clip gradients.
    """
    noise_max = _noise_max(p)
    strips = [st for st in imagesim.strips(run.samples) if len(st.samples) >= 3]
    explained = _explained(run, p, noise_max)
    per_interval: dict[tuple[int, int], list] = {}
    judged: dict[tuple[int, int], int] = {}
    for st in strips:
        ss = st.samples
        ch = []
        for a, b in zip(ss, ss[1:]):
            if _usable(a, noise_max) and _usable(b, noise_max):
                ch.append((a, b, imagesim.change(a.signature, b.signature)))
            else:
                ch.append((a, b, None))
        for k in range(1, len(ch)):
            a, b, c = ch[k]
            if c is None:
                continue
            key = (a.step, b.step)
            judged[key] = judged.get(key, 0) + 1
            others = [x[2] for i, x in enumerate(ch) if i not in (0, k) and x[2] is not None]
            if not others:
                continue
            base = max(0.05, median(others))
            # landing on, or two steps before, a training image or another prompt's picture:
            # memorisation or collapse arriving, which their own rules report
            if c >= p["min_change"] and c >= p["min_ratio"] * base and not any(
                    explained(x) for x in ss[k + 1:k + 4] if _usable(x, noise_max)):
                per_interval.setdefault(key, []).append((st, a, b, c, base))
    out = []
    cands = [(k, v) for k, v in per_interval.items() if len(v) >= p["min_strip_fraction"] * judged[k]]
    cands.sort(key=lambda kv: (-len(kv[1]) / judged[kv[0]], kv[0]))
    for (a_step, b_step), hits in sorted(cands[:p["max_findings"]]):
        n = judged[(a_step, b_step)]
        ev = [f"{len(hits)} of {n} prompt timelines sampled at both steps changed abruptly"]
        for st, a, b, c, base in hits[:6]:
            ev.append(f"{st.label}{_quote(st.prompt)}: change {c:.2f} (usually {base:.2f}) from "
                      f"{a.file} to {b.file}")
        b_ = _before(run, b_step + 1)
        if b_:
            ev.append(b_)
        flagged = [x for _, a, b, _, _ in hits for x in (a.file, b.file)]
        files, more = _cap(flagged, p["max_files"])
        out.append(p.finding(
            f"Samples changed abruptly between steps {a_step} and {b_step} "
            f"({len(hits)} of {n} prompts)", step=b_step, step_range=[a_step, b_step],
            evidence=ev + more, files=files, extra={"flagged": [b.file for _, _, b, _, _ in hits]}))
    return out
