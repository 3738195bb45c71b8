"""`run.*`: the run as a whole — mixed logs, training cut short."""
from __future__ import annotations

from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule


@rule("run.mixed")
def run_mixed(run: Run, p: Params) -> list[Finding]:
    """Logs of several runs interleaved in one log directory.

    ## What it detects
    Two or more training runs written into the same output or logging directory:
    a train-loss curve whose step counter goes back to the start inside one event
    file, two event files that both start at the first step, trainer states planned
    for different `max_steps`, or checkpoints that log different losses at the same steps.

    ## Why it matters
    TensorBoard and most scripts draw such curves as one line that zig-zags back in
    time; a "spike" or "plateau" may just be the second run's curve drawn over the
    first. Checkpoints in the folder may come from either run.

    ## Example
    Running `python train.py --output_dir out` twice with different settings leaves
    `out/runs/.../events.out.tfevents.A` and `...B`, both starting at step 1, and
    `checkpoint-40/` from the second run beside `checkpoint-60/` from the first.

    ## Fix
    Give every run its own `output_dir` / `logging_dir` (e.g. with a timestamp), or
    delete the old logs before re-running. lorascope analyzes the latest run's points
    where steps overlap.
    """
    ev = run.facts.get("mixed_evidence") or []
    if not ev:
        return []
    return [p.finding(title=f"Logs of more than one run share this directory ({len(ev)} sign(s))",
                      evidence=list(ev))]


def _tail_events(run: Run):
    return [e for e in run.events if e.kind in ("traceback", "oom")]


@rule("run.incomplete")
def run_incomplete(run: Run, p: Params) -> list[Finding]:
    """Training stopped before its planned steps.

    ## What it detects
    The last logged optimizer step falls short of the planned steps (`max_steps`, or
    the trainer's own total), an event file ends in a truncated record, or the
    trainer log ends in a traceback or out-of-memory error.

    ## Why it matters
    A run killed by the scheduler, an OOM or a crash leaves an adapter from an earlier
    checkpoint (or none); judging the curve or the adapter as if training had finished
    leads to wrong conclusions about the settings.

    ## Example
    `trainer_state.json` in `checkpoint-200/` plans `max_steps: 500`, the event file's
    last record is cut mid-write, and `train.log` ends with `Killed`.

    ## Fix
    Find the cause in the log (OOM: smaller batch or gradient checkpointing; a data
    error: fix the file), then resume from the last checkpoint
    (`resume_from_checkpoint`) instead of starting over.
    """
    ev: list[str] = []
    files: list[str] = []
    strong = False
    step = None
    last, planned = run.steps.last, run.steps.planned
    if last is not None and planned:
        missing = planned - last
        # the trainer's own global step is exact; a last *logged* step may lag by one interval
        exact = run.facts.get("state_global_step") == last
        interval = 1 if exact else int(run.config.get("logging_steps") or 1)
        if missing > max(interval, p["min_missing_fraction"] * planned):
            ev.append(f"last logged step {last} of {planned} planned ({last / planned:.0%} done)")
            step = last
            # is the last step only what a checkpoint's state says?
            from_ckpt_only = all(
                s.kind != "tfevents" and s.kind != "trainer_log" and "checkpoint-" in s.path
                for s in run.sources if s.kind in ("trainer_state", "tfevents", "trainer_log"))
            strong = not from_ckpt_only
            if from_ckpt_only:
                ev.append("the only trainer state found is a checkpoint's: the run may have gone on after that save")
    for s in run.sources:
        for prob in s.problems:
            if "truncated" in prob and s.kind == "tfevents":
                ev.append(f"{s.path}: {prob} (the writer was killed mid-record)")
                files.append(s.path)
                strong = True
    tail = _tail_events(run)
    if tail and ev:
        e = tail[-1]
        exc = e.data.get("exception") if e.kind == "traceback" else None
        line = e.data.get("exception_line") or e.line
        ev.append(f"{e.file}:{line}: {exc}" if exc else f"{e.file}:{e.line}: {e.text}")
        files.append(e.file)
    if not ev:
        return []
    if step is not None:
        title = f"Training stopped at step {step} of {planned} planned"
    else:
        title = "Training was cut short: an event file ends in a truncated record"
    return [p.finding(title=title, severity=None if strong else "info", step=step,
                      evidence=ev, files=sorted(set(files)))]
