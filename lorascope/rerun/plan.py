"""What to replay: the diagnosis, the checkpoint before its onset, the window, the fix.

No torch here: planning reads only the :class:`~lorascope.pipeline.Analysis` and the
run directory listing, so a plan (and its errors) comes back in well under a second.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.model import SEVERITY_ORDER, Finding
from lorascope.trainers import hf_trainer, kohya

MIN_LOG_INTERVALS = 5          # the margin after the symptom covers at least this many logs
MARGIN_FRAC = 0.2              # ... and this share of the replayed window
CKPT_RE = hf_trainer.CHECKPOINT_DIR_RE       # checkpoint-<step>/ (HF, lora-scripts YAML)
MAX_SAFETENSORS_LOOKED_AT = 500   # kohya files whose header is read while planning


class RerunError(Exception):
    """A rerun that cannot start; the message is the one-line reason (exit 2)."""


@dataclass
class CheckpointRef:
    step: int
    path: Path                 # the checkpoint-N directory (HF/PEFT) or safetensors file
    kind: str = "peft-dir"     # peft-dir | dir (checkpoint-N/ holding a LoRA safetensors:
                               # lora-scripts) | safetensors (a kohya LoRA file: weights only)


@dataclass
class Plan:
    run_dir: Path
    run_name: str
    rule: str
    onset: int                         # first step of the symptom
    symptom_end: int                   # last step of the symptom
    checkpoint: CheckpointRef | None   # None: start from the base model, fresh adapter
    start: int                         # the step training resumes after (0 from scratch)
    end: int                           # the last step to replay
    fix: dict[str, Any]
    planned: int | None                # the original run's planned total steps
    notes: list[str] = field(default_factory=list)

    @property
    def from_scratch(self) -> bool:
        return self.checkpoint is None

    @property
    def steps(self) -> int:
        return self.end - self.start


# -- the diagnosis --------------------------------------------------------------------

def choose_diagnosis(findings: list[Finding], rule_id: str | None = None) -> Finding:
    """The most severe step-bound finding with a non-empty fix, or the one `rule_id` names
    (its first occurrence). Findings come sorted by severity then step from `diagnose`."""
    if rule_id:
        hits = [f for f in findings if f.rule == rule_id]
        if not hits:
            fired = ", ".join(sorted({f.rule for f in findings})) or "none"
            raise RerunError(f"--rule {rule_id}: no such finding in this run (found: {fired})")
        f = hits[0]
        if not f.fix:
            raise RerunError(f"--rule {rule_id}: this finding carries no automatic fix")
        if f.step is None:
            raise RerunError(f"--rule {rule_id}: this finding is not tied to a step, so there "
                             f"is no 'before the failure' to resume from")
        return f
    cands = [f for f in findings if f.step is not None and f.fix]
    if not cands:
        if any(f.fix for f in findings):
            raise RerunError("no step-bound finding with a fix (the findings with a fix are "
                             "not tied to a step); pick one with --rule")
        raise RerunError("no diagnosis with a fix: nothing to rerun")
    cands.sort(key=lambda f: (-SEVERITY_ORDER.get(f.severity, 0), f.step))
    return cands[0]


# -- checkpoints ----------------------------------------------------------------------

def kohya_file_step(path: Path) -> int | None:
    """The optimizer step a kohya LoRA file was saved at: its ``ss_steps`` metadata
    (train_network.py writes the global step there on every save), else None. Only the
    file's header is read."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except Exception:           # not a safetensors file, truncated header, ...
        return None
    return kohya.file_step(meta)


def find_checkpoints(run_dir: Path) -> list[CheckpointRef]:
    """Checkpoints the run saved, at any depth up to 3, sorted by step: HF
    `checkpoint-N/` directories holding a PEFT adapter (adapter_model.safetensors +
    adapter_config.json), and kohya LoRA files (`<name>-00000N.safetensors`,
    `<name>.safetensors`) whose ``ss_steps`` metadata gives the step they were saved at
    (adapter weights only: kind "safetensors"). A directory wins over a file of the
    same step."""
    out: dict[int, CheckpointRef] = {}
    files: dict[int, CheckpointRef] = {}
    looked = 0
    run_dir = Path(run_dir)
    for root, dirs, names in os.walk(run_dir):
        depth = len(Path(root).relative_to(run_dir).parts)
        if depth >= 3:
            dirs[:] = []
        for d in dirs:
            m = CKPT_RE.match(d)
            if not m:
                continue
            p = Path(root) / d
            step = int(m.group(1))
            if (p / "adapter_model.safetensors").is_file() and (p / "adapter_config.json").is_file():
                out.setdefault(step, CheckpointRef(step, p))
            elif any(p.glob("*.safetensors")):
                out.setdefault(step, CheckpointRef(step, p, kind="dir"))
        if CKPT_RE.match(Path(root).name) or depth > 3:
            continue
        for n in sorted(names):
            if not n.lower().endswith(".safetensors") or looked >= MAX_SAFETENSORS_LOOKED_AT:
                continue
            p = Path(root) / n
            if not p.is_file():
                continue
            looked += 1
            step = kohya_file_step(p)
            if step is not None:
                files.setdefault(step, CheckpointRef(step, p, kind="safetensors"))
    for step, ref in files.items():
        out.setdefault(step, ref)
    return [out[s] for s in sorted(out)]


def choose_checkpoint(ckpts: list[CheckpointRef], onset: int,
                      from_step: int | None) -> CheckpointRef | None:
    """The latest checkpoint strictly before `onset`, or at or before `from_step`."""
    if from_step is not None:
        ok = [c for c in ckpts if c.step <= from_step]
        if not ok:
            if from_step <= 0:
                return None
            have = ", ".join(str(c.step) for c in ckpts) or "none"
            raise RerunError(f"--from-step {from_step}: no checkpoint at or before that step "
                             f"(checkpoints at: {have}); use --from-step 0 to start from scratch")
        return ok[-1]
    ok = [c for c in ckpts if c.step < onset]
    return ok[-1] if ok else None


# -- the window -----------------------------------------------------------------------

def replay_end(start: int, onset: int, symptom_end: int, *, steps: int | None,
               logging_steps: int | None, planned: int | None) -> int:
    """`--steps N`: start + N. Otherwise through the symptom's end plus a margin of
    MARGIN_FRAC of that window and at least MIN_LOG_INTERVALS logging intervals, capped
    at the run's planned total (the schedule ends there)."""
    if steps is not None:
        return start + int(steps)
    through = max(symptom_end, onset)
    span = max(1, through - start)
    log_every = max(1, int(logging_steps or 1))
    margin = max(int(round(span * MARGIN_FRAC)), MIN_LOG_INTERVALS * log_every)
    end = through + margin
    if planned and planned > start and end > planned:
        end = max(planned, through if through <= planned else planned)
    return max(end, start + MIN_LOG_INTERVALS * log_every)


def check_window(rule: str, onset: int, ckpt: CheckpointRef | None, end: int,
                 ckpts: list[CheckpointRef], *, from_step: int | None = None,
                 steps: int | None = None) -> None:
    """The replay must hold the symptom's first step: resumed from a save strictly before
    the onset (a checkpoint at step N holds the weights after step N, so checkpoint-<onset>
    already took the failing step) and running at least to the onset. Otherwise the fixed
    replay cannot show the symptom whatever the fix does, and a clean window would read as
    'fixed' without testing anything: a RerunError (exit 2) before any training, naming the
    setting that would work."""
    start = ckpt.step if ckpt is not None else 0
    if ckpt is not None and start >= onset:        # from scratch holds every step
        before = [c for c in ckpts if c.step < onset]
        use = (f"--from-step {before[-1].step} (the last checkpoint before it)" if before
               else "--from-step 0 (no checkpoint before it: from scratch)")
        asked = f"--from-step {from_step}: " if from_step is not None else ""
        raise RerunError(f"{asked}the checkpoint at step {start} is at or after the onset of "
                         f"{rule} (step {onset}), so the replay would start past the failure "
                         f"and could not show whether the fix prevents it; use {use}")
    if end < onset:
        if steps is not None:
            raise RerunError(f"--steps {steps}: the replay (steps {start + 1}-{end}) would end "
                             f"before the onset of {rule} (step {onset}), so it could not show "
                             f"whether the fix prevents it; use --steps {onset - start} or "
                             f"more, or leave --steps out")
        raise RerunError(f"the replay window (steps {start + 1}-{end}) ends before the onset of "
                         f"{rule} (step {onset}): the run's planned total is shorter than "
                         f"its log; pass --steps {onset - start} or more")


def make_plan(analysis, *, rule_id: str | None = None, from_step: int | None = None,
              steps: int | None = None) -> Plan:
    run = analysis.run
    run_dir = Path(run.path)
    f = choose_diagnosis(analysis.findings, rule_id)
    onset = int(f.step)
    symptom_end = int(f.step_range[1]) if f.step_range else onset
    found = find_checkpoints(run_dir)
    if run.others:
        # a folder holding several runs: resume only from this run's own saves
        mine = [Path(run.path) / c.path for c in run.checkpoints if not c.truncated]
        found = [c for c in found if any(m == c.path or c.path in m.parents for m in mine)]
    else:
        cut = {Path(run.path) / c.path for c in run.checkpoints if c.truncated}
        found = [c for c in found if not any(m == c.path or c.path in m.parents for m in cut)]
    # saves the run's files name by step (ai-toolkit's `<name>_000000250`, OneTrainer's
    # `-save-<step>-...`, metadata steps): adapter weights only
    have = {c.step for c in found}
    for c in run.checkpoints:
        p = run_dir / c.path
        if c.step and c.step not in have and not c.truncated and p.is_file() and not run.others:
            found.append(CheckpointRef(int(c.step), p, kind="safetensors"))
            have.add(c.step)
    found.sort(key=lambda c: c.step)
    ckpt = choose_checkpoint(found, onset, from_step)
    notes: list[str] = []
    if ckpt is None:
        start = 0
        notes.append(f"no checkpoint before step {onset}: starting from the base model with a "
                     f"freshly initialised adapter at step 0")
    else:
        start = ckpt.step
    planned = run.steps.planned or run.config.get("max_steps")
    planned = int(planned) if planned else None
    end = replay_end(start, onset, symptom_end, steps=steps,
                     logging_steps=run.config.get("logging_steps"), planned=planned)
    if end <= start:
        raise RerunError(f"empty replay window ({start}..{end})")
    check_window(f.rule, onset, ckpt, end, found, from_step=from_step, steps=steps)
    return Plan(run_dir=run_dir, run_name=run.name, rule=f.rule, onset=onset,
                symptom_end=symptom_end, checkpoint=ckpt, start=start, end=end,
                fix=dict(f.fix), planned=planned, notes=notes)


# -- paths the run names ---------------------------------------------------------------

def resolve_path(value: str | None, run_dir: Path, also: list[Path] | None = None) -> Path | None:
    """A path the run's config names, made absolute: as given when absolute, else relative
    to the run dir, the config file's folder, or the current directory (first that exists)."""
    if not value:
        return None
    p = Path(os.path.expanduser(str(value)))
    if p.is_absolute():
        return p if p.exists() else None
    for base in [run_dir, *(also or []), Path.cwd()]:
        q = (base / p)
        if q.exists():
            return q.resolve()
    return None


def config_file_dir(run, key: str) -> list[Path]:
    """The folder of the file that set `key`, when known."""
    o = run.config.origins.get(key)
    if o is None or not o.file:
        return []
    return [(Path(run.path) / o.file).parent]


def base_model_path(run, plan: Plan) -> Path:
    """The local base model: the config's `base_model`, else the adapter's
    base_model_name_or_path; must be a directory holding config.json."""
    run_dir = Path(run.path)
    tried: list[str] = []
    cands: list[tuple[str, list[Path]]] = []
    bm = run.config.get("base_model")
    if bm:
        cands.append((str(bm), config_file_dir(run, "base_model")))
    for d in ([plan.checkpoint.path] if plan.checkpoint else []) + [run_dir]:
        cfg = d / "adapter_config.json"
        if cfg.is_file():
            try:
                name = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError):
                name = None
            if isinstance(name, str) and name:
                cands.append((name, [d]))
    for name, also in cands:
        tried.append(name)
        p = resolve_path(name, run_dir, also)
        if p is not None and (p / "config.json").is_file():
            return p
    if not tried:
        raise RerunError("the run does not say which base model it used (no base_model in its "
                         "config, no adapter_config.json)")
    raise RerunError(f"base model not found locally: {tried[0]} (the built-in backend needs "
                     f"the model on disk; or use --cmd with your trainer)")
