"""ckpt.* rules: what the saved adapter files say about the run.

They read ``run.checkpoints`` (one :class:`Checkpoint` per safetensors file, sorted by
step, with per-layer :class:`Module` norms) and ``run.config``. Thresholds live in
``rules/ckpt.toml``.
"""
from __future__ import annotations

import math
from typing import Any

from lorascope.model import Checkpoint, Finding, Run
from lorascope.rules.registry import Params, rule


# -- helpers --------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _where(run: Run, key: str) -> str:
    o = run.config.origins.get(key)
    return f"{o.file}: {o.orig_key}" if o is not None else "config"


def _lead(cks: list[Checkpoint], n: int = 3) -> str:
    names = [c.path for c in cks[:n]]
    more = f" and {len(cks) - n} more" if len(cks) > n else ""
    return ", ".join(names) + more


def _first_step(cks: list[Checkpoint]) -> int | None:
    steps = [c.step for c in cks if c.step is not None]
    return min(steps) if steps else None


def _no_weights(ck: Checkpoint) -> bool:
    """An adapter file that holds no LoRA pair: it claims an adapter format (by its
    name, metadata or adapter_config.json) or holds no tensors at all."""
    return not ck.modules and (ck.format != "unknown" or not ck.tensors)


def _total_norm(ck: Checkpoint) -> float | None:
    if not ck.modules or any(m.norm is None for m in ck.modules):
        return None
    t = math.sqrt(sum(m.norm * m.norm for m in ck.modules))
    return t if math.isfinite(t) else None


def _lr_is_zero(run: Run) -> bool:
    lr = run.config.get("learning_rate")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr == 0:
        return True
    s = run.primary("lr")
    if s is not None and len(s.values):
        import numpy as np
        v = np.asarray(s.values, dtype=float)
        v = v[np.isfinite(v)]
        return bool(len(v)) and bool((v == 0).all())
    return False


# -- rules ----------------------------------------------------------------------------

@rule("ckpt.truncated", needs=("checkpoints",))
def ckpt_truncated(run: Run, p: Params) -> list[Finding]:
    """A checkpoint file is cut short or unreadable.

    ## What it detects
    A saved adapter file whose header names tensors that lie (partly) past the end of the
    file, whose header length is larger than the file, or whose header is not valid JSON:
    a file that cannot be read in full. How much of it is missing is part of the evidence.

    ## Why it matters
    The adapter cannot be loaded (safetensors refuses it, or loads garbage), and the part
    that can be read says nothing about what was learned: its missing weights are not
    zero, they are absent. Usually a save or copy killed midway (full disk, SIGKILL, an
    interrupted upload or sync).

    ## Example
    A 1.3 MB piece of a 161 MB `adapter_model.safetensors`: 448 of 512 tensors lie
    outside the file.

    ## Fix
    Copy the file again from where it was saved, or use the previous checkpoint; if the
    save itself was killed, resume training from the last complete checkpoint. No setting
    change is applied automatically.
    """
    cut = [c for c in run.checkpoints if c.truncated]
    if not cut:
        return []
    ev = []
    for c in cut[:10]:
        ev.append(f"{c.path}: {c.size_bytes} bytes, {len(c.modules)} layers could be read"
                  + (f"; {c.problems[0]}" if c.problems else ""))
    good = [c for c in run.checkpoints if not c.truncated and c.modules and c.step is not None]
    first = _first_step(cut)
    if first is not None:
        before = [c for c in good if c.step < first]
        if before:
            ev.append(f"last complete checkpoint before it: {before[-1].path} (step {before[-1].step})")
    return [p.finding(
        title=(f"Checkpoint {cut[0].path} is cut short or unreadable" if len(cut) == 1 else
               f"{len(cut)} checkpoint files are cut short or unreadable ({_lead(cut)})"),
        step=first, evidence=ev, files=[c.path for c in cut])]


@rule("ckpt.zero_adapter", needs=("checkpoints",))
def ckpt_zero_adapter(run: Run, p: Params) -> list[Finding]:
    """The adapter's weights are all zero: it never learned.

    ## What it detects
    A saved adapter whose every up / B weight (`lora_up`, `lora_B`, `lora.up`) is exactly
    zero, or an adapter file that holds no LoRA weights at all (no tensors, or none of the
    down/up, A/B pairs its format should hold). A zero file followed by a non-zero one of a
    later step (a save before the first update) is not reported. When only some layers are
    zero (at least `partial_min_fraction` of them) the finding has `partial_severity`. A
    file cut short or unreadable is never judged here (`ckpt.truncated`): its missing
    weights are absent, not zero.

    ## Why it matters
    LoRA starts with B = 0 so that the adapter is a no-op; a B that is still zero after
    training means the adapter changes nothing: loading it gives the base model back. The
    loss curve may even look normal (the base model's loss), so the failure goes unnoticed
    until the adapter is used.

    ## Example
    `learning_rate: 0` in the config (or an optimizer built before the LoRA layers were
    injected): `checkpoint-500/adapter_model.safetensors` holds 64 `lora_B` weights, all 0.0.

    ## Fix
    With a learning rate of 0 the fix sets `learning_rate = 1e-4`. Otherwise check the log
    for "trainable params: 0", that the optimizer receives the LoRA parameters, and that the
    target modules exist in the model.
    """
    out: list[Finding] = []
    cks = [c for c in run.checkpoints if not c.truncated]
    nonzero_steps = [c.step for c in cks if c.step is not None and c.modules
                     and not all(m.zero for m in c.modules)]
    last_good = max(nonzero_steps) if nonzero_steps else None

    def superseded(c: Checkpoint) -> bool:
        return c.step is not None and last_good is not None and last_good > c.step

    empty = [c for c in cks if _no_weights(c)]
    if empty:
        out.append(p.finding(
            title=f"Adapter file holds no LoRA weights: {_lead(empty)}",
            step=_first_step(empty),
            evidence=[f"{c.path}: format {c.format}, {len(c.tensors)} tensors, no down/up pair"
                      + (f" ({'; '.join(c.problems[:2])})" if c.problems else "") for c in empty[:10]],
            files=[c.path for c in empty]))

    zero = [c for c in cks if c.modules and all(m.zero for m in c.modules) and not superseded(c)]
    if zero:
        f = p.finding(
            title=(f"All {len(zero[-1].modules)} LoRA up/B weights are zero in {zero[-1].path}: "
                   "the adapter never learned" if len(zero) == 1 else
                   f"All LoRA up/B weights are zero in {len(zero)} checkpoints "
                   f"({_lead(zero)}): the adapter never learned"),
            step=_first_step(zero),
            evidence=[f"{c.path}: {len(c.modules)} of {len(c.modules)} layers have an all-zero "
                      f"up/B weight" + (f" (step {c.step})" if c.step is not None else "")
                      for c in zero[:10]],
            files=[c.path for c in zero])
        if _lr_is_zero(run):
            f.evidence.append(f"learning_rate = 0 ({_where(run, 'learning_rate')})")
            f.fix = {"learning_rate": float(p["fix_learning_rate"])}
        out.append(f)

    frac = float(p["partial_min_fraction"])
    partial = []
    for c in cks:
        nz = sum(1 for m in c.modules if m.zero)
        if c.modules and 0 < nz < len(c.modules) and nz / len(c.modules) >= frac and not superseded(c):
            partial.append((c, nz))
    if partial:
        c, nz = partial[-1]
        names = [m.name for m in c.modules if m.zero]
        out.append(p.finding(
            title=f"{nz} of {len(c.modules)} LoRA layers are still zero in {c.path}",
            severity=p.get("partial_severity", "warning"),
            step=c.step,
            evidence=[f"{c2.path}: {n2} of {len(c2.modules)} layers have an all-zero up/B weight"
                      for c2, n2 in partial[:10]] + [f"zero layers include: {', '.join(names[:5])}"],
            files=[c2.path for c2, _ in partial]))
    return out


@rule("ckpt.nonfinite", needs=("checkpoints",))
def ckpt_nonfinite(run: Run, p: Params) -> list[Finding]:
    """NaN or Inf values in the adapter weights.

    ## What it detects
    Any non-finite element in any tensor of a saved adapter file (the LoRA down/up
    weights, their alpha, saved extra modules), counted per layer.

    ## Why it matters
    One NaN in a LoRA weight makes every output of the layer NaN: the adapter produces
    black images or NaN logits. Training usually went NaN at or before the first bad
    checkpoint, and later checkpoints are unusable.

    ## Example
    fp16 training at `learning_rate: 1e-3` without clipping: from `checkpoint-600` on,
    `lora_B` of 12 layers holds NaN.

    ## Fix
    `max_grad_norm = 1.0` and a lower learning rate (the catalog default: x0.2); prefer
    bf16 to fp16. Resume from the last checkpoint before the first bad one.
    """
    bad = []
    for c in run.checkpoints:
        n = sum(t.nonfinite for t in c.tensors)
        n = max(n, sum(m.nonfinite for m in c.modules))
        if n:
            bad.append((c, n))
    if not bad:
        return []
    first, n = bad[0]
    layers = [m.name for m in first.modules if m.nonfinite]
    ev = [f"{c.path}: {k} non-finite values in {sum(1 for m in c.modules if m.nonfinite)} of "
          f"{len(c.modules)} layers" + (f" (step {c.step})" if c.step is not None else "")
          for c, k in bad[:10]]
    if layers:
        ev.append(f"first layers with NaN/Inf: {', '.join(layers[:5])}")
    bad_paths = {c.path for c, _ in bad}
    good_before = [c for c in run.checkpoints if c.step is not None and first.step is not None
                   and c.step < first.step and c.path not in bad_paths and c.modules]
    if good_before:
        ev.append(f"last clean checkpoint before it: {good_before[-1].path} (step {good_before[-1].step})")
    return [p.finding(
        title=f"NaN/Inf in the adapter weights of {first.path} ({n} values"
              + (f", {len(layers)} layers)" if layers else ")")
              + (f" and {len(bad) - 1} later checkpoint(s)" if len(bad) > 1 else ""),
        step=first.step, evidence=ev, files=[c.path for c, _ in bad])]


@rule("ckpt.norm_growth", needs=("checkpoints",))
def ckpt_norm_growth(run: Run, p: Params) -> list[Finding]:
    """Adapter norms grow explosively from one checkpoint to the next.

    ## What it detects
    The total norm of the adapter's effective update (the root of the summed squares of
    every layer's `||up @ down * alpha / rank||`) across the run's checkpoints, ordered
    by step. Checkpoints are compared within one layout (same format, rank and number
    of layers). Between consecutive checkpoints a norm that grows `min_growth` times
    more than their step ratio (the growth of a linear rise from zero) fires.

    ## Why it matters
    A LoRA's norm rises steadily and then levels off. A sudden multiplication means
    large, unstable updates: the adapter overshoots, images burn or text degenerates,
    and NaN often follows.

    ## Example
    Norm 0.8 at step 200, 1.1 at step 400, 96 at step 600 (x87 where x1.5 is expected).

    ## Fix
    `max_grad_norm = 1.0` and a lower learning rate (catalog default: x0.5); resume from
    the checkpoint before the jump.
    """
    groups: dict[tuple, list[tuple[int, float, Checkpoint]]] = {}
    for c in run.checkpoints:
        if c.truncated:
            continue                   # a part of the layers: no total norm
        t = _total_norm(c)
        if c.step is None or t is None:
            continue
        groups.setdefault((c.format, c.rank, len(c.modules)), []).append((c.step, t, c))
    out: list[Finding] = []
    min_growth = float(p["min_growth"])
    min_norm = float(p["min_norm"])
    for traj in groups.values():
        traj.sort(key=lambda x: (x[0], x[2].path))
        uniq: list[tuple[int, float, Checkpoint]] = []
        for item in traj:
            if uniq and uniq[-1][0] == item[0]:
                continue
            uniq.append(item)
        if len(uniq) < 2:
            continue
        worst = None
        for (s1, n1, _), (s2, n2, c2) in zip(uniq, uniq[1:]):
            if n1 < min_norm or s1 <= 0:
                continue
            expected = max(1.0, s2 / s1)
            growth = (n2 / n1) / expected
            if growth >= min_growth and (worst is None or growth > worst[0]):
                worst = (growth, s1, n1, s2, n2, c2, expected)
        if worst is None:
            continue
        growth, s1, n1, s2, n2, c2, expected = worst
        shown = uniq if len(uniq) <= 12 else uniq[:6] + uniq[-6:]
        out.append(p.finding(
            title=f"Adapter norm jumped x{n2 / n1:.3g} between steps {s1} and {s2} "
                  f"({_fmt(n1)} -> {_fmt(n2)})",
            step=s2, step_range=[s1, s2],
            evidence=["adapter norm by checkpoint: " + ", ".join(f"step {s}: {_fmt(n)}" for s, n, _ in shown),
                      f"x{n2 / n1:.3g} between steps {s1} and {s2} where steady growth from zero "
                      f"gives at most x{expected:.3g}"],
            files=[c2.path]))
    return out


def _leaf(name: str) -> str:
    parts = [x for x in name.strip().split(".") if x]
    if not parts:
        return ""
    leaf = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
    return leaf.replace(".", "_")


@rule("ckpt.config_mismatch", needs=("checkpoints", "config"))
def ckpt_config_mismatch(run: Run, p: Params) -> list[Finding]:
    """Rank, alpha or target modules in the adapter file disagree with the config.

    ## What it detects
    The rank read from the tensor shapes, the alpha stored with the adapter and the set
    of adapted layer names (`q_proj`, `to_k`, ...) compared with `lora_rank`,
    `lora_alpha` and `target_modules` of the run's config, naming the file and key each
    config value came from. Alphas within `alpha_rel_tol` are equal; a file whose every
    alpha equals its rank and whose metadata names no alpha is not compared for alpha
    (diffusers' kohya converter writes alpha = rank); `all`, `all-linear` and regular
    expressions in `target_modules` are not compared.

    ## Why it matters
    The file was written by another run or config than the one in the folder, or the
    trainer silently ignored a setting (a misspelt target module is not adapted at all).
    Conclusions drawn from the config (rank capacity, alpha / rank scaling) are then
    wrong for this adapter.

    ## Example
    `train.yaml` says `lora_rank: 8`, `adapter_model.safetensors` holds `lora_A` weights
    of shape [16, 4096].

    ## Fix
    Check which config produced the file; re-run with the intended values or correct
    the config. No setting change is applied automatically.
    """
    cfg = run.config
    cks = [c for c in run.checkpoints if c.modules and not c.truncated]
    if not cks:
        return []
    out: list[Finding] = []
    maxf = int(p["max_files_listed"])

    want_rank = cfg.get("lora_rank")
    if isinstance(want_rank, (int, float)) and not isinstance(want_rank, bool) and want_rank > 0:
        bad = [c for c in cks if c.rank is not None and c.rank != int(want_rank)]
        if bad:
            out.append(p.finding(
                title=f"Adapter rank {bad[-1].rank} in {bad[-1].path} disagrees with "
                      f"lora_rank = {int(want_rank)} in the config",
                evidence=[f"{c.path}: rank {c.rank} from the tensor shapes" for c in bad[:maxf]]
                + [f"lora_rank = {int(want_rank)} ({_where(run, 'lora_rank')})"],
                files=[c.path for c in bad]))

    want_alpha = cfg.get("lora_alpha")
    if isinstance(want_alpha, (int, float)) and not isinstance(want_alpha, bool) and want_alpha > 0:
        tol = float(p["alpha_rel_tol"])
        bad = []
        for c in cks:
            if c.alpha is None:
                continue
            if abs(c.alpha - want_alpha) <= tol * max(abs(want_alpha), 1e-12):
                continue
            converted = all(m.alpha is not None and m.rank and abs(m.alpha - m.rank) < 1e-6
                            for m in c.modules) and "ss_network_alpha" not in c.metadata
            if converted:
                continue
            bad.append(c)
        if bad:
            out.append(p.finding(
                title=f"Adapter alpha {_fmt(bad[-1].alpha)} in {bad[-1].path} disagrees with "
                      f"lora_alpha = {_fmt(want_alpha)} in the config",
                evidence=[f"{c.path}: alpha {_fmt(c.alpha)} stored with the adapter" for c in bad[:maxf]]
                + [f"lora_alpha = {_fmt(want_alpha)} ({_where(run, 'lora_alpha')})"],
                files=[c.path for c in bad]))

    want_tm = cfg.get("target_modules")
    if isinstance(want_tm, str):
        want_tm = [x for x in want_tm.split(",")]
    if isinstance(want_tm, (list, tuple)) and want_tm:
        names = [str(x).strip() for x in want_tm if str(x).strip()]
        plain = names and all(n.lower() not in ("all", "all-linear", "all_linear")
                              and not any(ch in n for ch in "()[]*|\\^$?+{}") for n in names)
        if plain:
            want = {_leaf(n) for n in names}
            bad = []
            for c in cks:
                have = {t.replace(".", "_") for t in c.target_modules}
                missing, extra = sorted(want - have), sorted(have - want)
                if missing or extra:
                    bad.append((c, missing, extra))
            if bad:
                c, missing, extra = bad[-1]
                parts = []
                if missing:
                    parts.append(f"missing {', '.join(missing)}")
                if extra:
                    parts.append(f"extra {', '.join(extra)}")
                out.append(p.finding(
                    title=f"Adapted layers in {c.path} differ from target_modules in the config "
                          f"({'; '.join(parts)})",
                    evidence=[f"{c2.path}: adapts {', '.join(c2.target_modules)}" for c2, _, _ in bad[:maxf]]
                    + [f"target_modules = {', '.join(names)} ({_where(run, 'target_modules')})"],
                    files=[c2.path for c2, _, _ in bad]))
    return out
