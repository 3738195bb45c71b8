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
    delete the old logs before re-running. lorascope splits the folder into its runs and
    analyses each on its own curves: the report is about the latest run, the others are
    listed with their own findings (`runs` in `--format json`).
    """
    if not run.mixed:
        return []
    n = max(2, len(run.others) + 1)
    which = f"{run.id}" + (" (the latest)" if run.latest else "")
    ev = list(run.mixed)
    for o in run.others:
        st = o.steps
        span = f"steps {st.first}-{st.last}" if st.first is not None and st.last is not None else "no steps"
        ev.append(f"{o.id}: {span}" + (f" of {st.planned} planned" if st.planned else "")
                  + f" ({', '.join(o.sources[:3])}" + (" ..." if len(o.sources) > 3 else "") + ")")
    return [p.finding(title=f"Logs of {n} runs share this directory; this report is about {which}",
                      evidence=ev)]


def _tail_events(run: Run):
    return [e for e in run.events if e.kind in ("traceback", "oom")]


@rule("run.incomplete")
def run_incomplete(run: Run, p: Params) -> list[Finding]:
    """Training stopped before its planned steps.

    ## What it detects
    The last logged optimizer step falls short of the planned steps (the trainer's own
    total, `max_steps`, or what the trainer's step count gives for its epochs, batch,
    accumulation and dataset size: kohya counts images x repeats, so a run killed before
    its first epoch ends is caught too), an event file ends in a truncated record, or the
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
    st = run.steps
    last, planned = st.last, st.planned
    if last is not None and planned:
        missing = planned - last
        # the trainer's own global step is exact; a last *logged* step may lag by one interval
        interval = 1 if st.last_exact else int(st.logging_interval or run.config.get("logging_steps") or 1)
        if missing > max(interval, p["min_missing_fraction"] * planned):
            ev.append(f"last logged step {last} of {planned} planned ({last / planned:.0%} done)")
            if st.planned_from:
                ev.append(f"planned steps: {planned} from {st.planned_from}")
            step = last
            strong = not st.last_from_checkpoint
            if st.last_from_checkpoint:
                ev.append("the only trainer state found is a checkpoint's: the run may have gone on after that save")
    for path, prob in run.cut_logs:
        ev.append(f"{path}: {prob} (the writer was killed mid-record)")
        files.append(path)
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
