"""``lorascope watch``: the diagnosis of a run while it is still training.

The loop: wait for a change (:mod:`lorascope.watch.notify`), read what is new
(:mod:`lorascope.watch.follow`), build the run from the accumulated pieces and run the
rules (the same :func:`lorascope.build.build_folder` and rules as ``analyze``), then
print what changed (:mod:`lorascope.watch.live`): each new finding once, as it appears,
with its step; a finding a later analysis no longer makes, as withdrawn.  An analysis
never starts sooner after the last one than the last one took, nor sooner than
:data:`MIN_GAP`: a trainer that flushes its event file at every step is analysed at most
twice a second, a run of a million points with about half a core at most (an analysis
there takes 0.2 to 0.4 s; bench/README.md), and nothing is analysed while the run is quiet.

It ends by itself when the run is over, and then reports on the whole run as
``analyze`` does:

* a trainer's own end-of-training mark: HF's summary entry (``train_runtime``) in a
  trainer state, a trainer state at ``global_step == max_steps``, HF's "Training
  completed" or kohya's "model saved." line in a text log, LLaMA-Factory's
  ``all_results.json`` / ``train_results.json``, a checkpoint saved at the planned last
  step - then, once nothing has been written for ``settle`` seconds (the trainer saves
  its adapter and state after the mark);
* the last logged step reaching the planned steps, then ``max(settle, 10 s)`` quiet;
* nothing new for ``idle_timeout`` seconds (a trainer killed without a word).

Ctrl-C (or SIGTERM) ends it too, with the report on the run so far: the run goes on,
so a record cut at the end of a file is still not a problem and rules that need the
whole run stay held back or provisional.  Exit status as ``analyze``: 1 when a finding
at or above ``--fail-on`` is in the final report, 2 on an error, else 0.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lorascope.watch.follow import RunFollower
from lorascope.watch.live import Change, Tracker, live_findings, tolerance
from lorascope.watch.notify import Notifier

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
FAIL_LEVELS = {"critical": ("critical",), "warning": ("critical", "warning"), "never": ()}
END_FILES = ("all_results.json", "train_results.json")
WALK_EVERY = 30.0          # seconds: a full walk at least this often, notifications or not
HTML_EVERY = 15.0          # seconds: the live HTML report is rewritten at most this often
MIN_GAP = 0.5              # seconds: the least time between the end of an analysis and the next
MARK_SLACK = 120.0         # seconds an end mark may be older than the newest curve data


@dataclass
class Options:
    run_dir: Path
    interval: float = 2.0
    fail_on: str = "critical"
    on_finding: str | None = None
    html: Path | None = None
    fmt: str = "text"
    rules_file: Path | None = None
    idle_timeout: float = 1800.0
    settle: float = 2.0
    notifications: bool = True
    color: bool = False


@dataclass
class End:
    kind: str              # "finished" | "idle" | "interrupted"
    detail: str


class _Interrupt(Exception):
    pass


def _blas_single_thread():
    """BLAS at one thread: the watch runs beside a trainer and its products are small
    (a multi-threaded OpenBLAS spends more time synchronising than computing on them)."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except Exception:               # any failure: leave BLAS alone
        return contextlib.nullcontext()


def _stamp(t: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


class Watch:
    def __init__(self, opts: Options, out=None, err=None) -> None:
        from lorascope.rules.registry import load_catalog
        self.o = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.catalog = load_catalog(opts.rules_file)
        self.follower = RunFollower(opts.run_dir)
        self.tracker = Tracker()
        self.cache: dict = {}
        self.notifier: Notifier | None = None
        self.last_change = time.monotonic()
        self.seen_data = False
        self.analysis = None
        self.cost = 0.0
        self.step: int | None = None
        self.mark: tuple[str, bool] | None = None     # (what, strong) once the run says it is over
        self.html_at = 0.0
        self.html_written: str | None = None
        self.errors = False
        self.hooks: list[threading.Thread] = []
        self.levels = FAIL_LEVELS[opts.fail_on]
        self.debug = bool(os.environ.get("LORASCOPE_WATCH_DEBUG"))

    # -- output ----------------------------------------------------------------------
    def _write(self, text: str, err: bool = False) -> None:
        from lorascope.cli import _safe
        stream = self.err if err else self.out
        stream.write(_safe(text) + "\n")
        stream.flush()

    def _note(self, text: str) -> None:
        """A line about the watch itself: stderr with --format json, else stdout."""
        from lorascope.report.safe import visible
        self._write(visible(text), err=self.o.fmt == "json")

    def _emit_json(self, obj: dict) -> None:
        from lorascope.report.safe import json_safe
        self._write(json_safe(json.dumps(obj, allow_nan=False, ensure_ascii=False)))

    def _style(self, s: str, key: str, bold: bool = False) -> str:
        if not self.o.color:
            return s
        import click
        from lorascope.report.text import COLORS
        return click.style(s, fg=COLORS.get(key), bold=bold)

    def _emit(self, ch: Change) -> None:
        it = ch.item
        now = time.time()
        if self.o.fmt == "json":
            obj = {"event": ch.kind, "time": round(now, 3), "at_step": self.step,
                   "provisional": bool(it.provisional), "finding": it.doc}
            if it.provisional:
                obj["provisional_why"] = it.provisional
            if ch.escalated_from:
                obj["escalated_from"] = ch.escalated_from
            self._emit_json(obj)
        else:
            self._write(self._text(ch, now))
        # the command acts on firm findings: a provisional one fires once confirmed
        if ch.kind in ("appeared", "confirmed") and not it.provisional \
                and it.severity in self.levels and self.o.on_finding:
            self._hook(ch, now)

    def _text(self, ch: Change, now: float) -> str:
        from lorascope.report.safe import visible_tree
        from lorascope.report.text import ICONS, fmt_fix
        it = ch.item
        d = visible_tree(it.doc)
        at = f"step {self.step}" if self.step is not None else "no step yet"
        where = f" @ step {d['step']}" if d["step"] is not None else ""
        head = f"{_stamp(now)}  {at:<11}"
        if ch.kind == "withdrawn":
            return (f"{head} {self._style('withdrawn', 'healthy')} [{d['rule']}]{where}  {d['title']}\n"
                    f"      no longer found in the run so far")
        if ch.kind == "confirmed":
            return (f"{head} {self._style('confirmed', it.severity, bold=True)} [{d['rule']}]{where}  "
                    f"{d['title']}")
        sev = it.severity
        label = f"{ICONS[sev]} {sev}" + (f" (was {ch.escalated_from})" if ch.escalated_from else "")
        lines = [f"{head} {self._style(label, sev, bold=True)} [{d['rule']}]{where}  {d['title']}"]
        if it.provisional:
            lines.append(f"      provisional: {it.provisional}")
        for e in d["evidence"][:3]:
            lines.append(f"      evidence: {e}")
        if d["fix"]:
            lines.append(self._style(f"      fix: {fmt_fix(d['fix'])}", "healthy"))
        return "\n".join(lines)

    def _hook(self, ch: Change, now: float) -> None:
        """--on-finding: the command, with the finding as JSON on stdin, in the background."""
        it = ch.item
        payload = json.dumps({"event": ch.kind, "time": round(now, 3), "at_step": self.step,
                              "run": str(self.o.run_dir),
                              "finding": it.doc}, allow_nan=False, ensure_ascii=False).encode("utf-8")
        env = dict(os.environ, LORASCOPE_RULE=it.rule, LORASCOPE_SEVERITY=it.severity,
                   LORASCOPE_STEP="" if it.step is None else str(it.step),
                   LORASCOPE_RUN=str(self.o.run_dir))
        try:
            out = self.err.fileno()            # its output never mixes into a JSON stream
        except (AttributeError, OSError, ValueError):
            out = subprocess.DEVNULL
        try:
            proc = subprocess.Popen(self.o.on_finding, shell=True, stdin=subprocess.PIPE,
                                    stdout=out, stderr=out, env=env)
        except OSError as e:
            self._note(f"lorascope: --on-finding could not start: {e.strerror or e}")
            return

        def feed() -> None:
            try:
                proc.communicate(payload)
            except (OSError, ValueError):
                proc.wait()
            if proc.returncode:
                self._write(f"lorascope: --on-finding command exited with status {proc.returncode}",
                            err=True)
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        self.hooks.append(t)

    # -- analysis --------------------------------------------------------------------
    def _analyse(self, final: bool, others: bool):
        from lorascope.pipeline import analyse_folder
        from lorascope.build import Unreadable, build_folder
        pieces = self.follower.pieces(final)
        try:
            folder = build_folder(self.o.run_dir, pieces=pieces, cache=self.cache)
        except Unreadable:
            return None
        return analyse_folder(folder, self.catalog, self.o.run_dir, others=others)

    def _live(self) -> None:
        t0 = time.monotonic()
        a = self._analyse(final=False, others=False)
        if a is None:
            return
        # the first analysis also reads the datasets (kept after): not a measure of the next
        self.cost = 0.0 if self.analysis is None else time.monotonic() - t0
        self.analysis = a
        self.step = a.run.steps.last
        shown, prov = live_findings(a.findings, a.run)
        changes = self.tracker.update(shown, prov, tolerance(a.run))
        for ch in changes:
            self._emit(ch)
        self._mark(a)
        if self.o.html and (changes or time.monotonic() - self.html_at >= HTML_EVERY):
            self._html(replace(a, findings=shown))

    def _html(self, a) -> bool:
        from lorascope.pipeline import report_document
        from lorascope.report.html import write_html
        from lorascope.report.paths import ReportWriteError
        self.html_at = time.monotonic()
        try:
            self.html_written = str(write_html(a, report_document(a), Path(self.o.html),
                                               [str(self.o.run_dir)]))
            return True
        except ReportWriteError as e:
            self._write(f"lorascope: {e}", err=True)
            self.errors = True
            return False

    # -- the end ---------------------------------------------------------------------
    def _mark(self, a) -> None:
        """Whether the run says it is over (see the module doc)."""
        parsed = [p for p in self.follower.pieces(False)[0] if p is not None]
        newest = 0.0
        mtimes: dict[str, float] = {}
        for fol in self.follower.followers.values():
            try:
                mtimes[fol.rel] = os.stat(fol.path).st_mtime
            except OSError:
                continue
            if fol.kind in ("tfevents", "trainer_log", "text_log", "trainer_state"):
                newest = max(newest, mtimes[fol.rel])
        mark = None
        for p in parsed:
            rel, f, k = p.source.path, p.facts, p.source.kind
            if mtimes.get(rel, 0.0) < newest - MARK_SLACK:
                continue                     # an earlier run's, in a folder used again
            if k == "trainer_state" and f.get("train_runtime") is not None:
                mark = f"{rel}: the trainer's summary (train_runtime)"
            elif k == "trainer_state" and f.get("planned_steps") and \
                    (f.get("state_global_step") or 0) >= f["planned_steps"]:
                mark = f"{rel}: global_step {f['state_global_step']} = max_steps"
            elif k == "results" and rel.rsplit("/", 1)[-1] in END_FILES:
                mark = f"{rel} written"
            elif k == "text_log" and f.get("training_finished"):
                mark = f"{rel}:{f['training_finished']}: the trainer's end-of-training line"
            if mark:
                self.mark = (mark, True)
                return
        st = a.run.steps
        if st.planned and st.last is not None and st.last >= st.planned:
            ck = [c for c in a.run.checkpoints if c.step is not None and c.step >= st.planned]
            if ck:
                self.mark = (f"{ck[-1].path}: saved at the planned last step {st.planned}", True)
            else:
                self.mark = (f"the last logged step {st.last} reached the planned {st.planned}", False)

    def _end(self, now: float) -> End | None:
        quiet = now - self.last_change
        if self.mark is not None:
            what, strong = self.mark
            need = self.o.settle if strong else max(self.o.settle, 10.0)
            if quiet >= need:
                return End("finished", what)
        if quiet >= self.o.idle_timeout:
            return End("idle", f"nothing new for {self.o.idle_timeout:g} s")
        return None

    # -- the loop --------------------------------------------------------------------
    def run(self) -> int:
        with contextlib.ExitStack() as self._limits:     # BLAS at one thread, once loaded
            return self._run()

    def _run(self) -> int:
        prev = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        if prev is not None:
            def on_term(signum, frame):
                raise _Interrupt()
            signal.signal(signal.SIGTERM, on_term)
        end: End | None = None
        try:
            end = self._loop()
        except (KeyboardInterrupt, _Interrupt):
            end = End("interrupted", "stopped by the user")
        finally:
            if self.notifier is not None:
                self.notifier.close()
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
        try:
            return self._finish(end)
        except (KeyboardInterrupt, _Interrupt):
            return EXIT_USAGE

    def _warm(self) -> None:
        """Run the rules once on a made-up curve before the trainer writes: the first
        analysis would otherwise pay for every import the curve stage makes on first use
        (about a second), and the first symptom would wait for it."""
        import numpy as np
        from lorascope.pipeline import _analyse
        from lorascope.model import Run, Series
        steps = np.arange(1, 201, dtype=np.int64)
        noise = np.random.default_rng(0).normal(0, 0.05, 200)
        loss = np.exp(-steps / 80.0) + 0.5 + noise
        loss[120] = 5.0
        run = Run(path="", name="warm-up", series=(
            Series("loss", "train_loss", steps, loss),
            Series("eval_loss", "eval_loss", steps[::20], loss[::20] + 0.1),
            Series("learning_rate", "lr", steps, np.full(200, 1e-4)),
            Series("grad_norm", "grad_norm", steps, np.abs(noise) + 1.0)))
        _analyse(run, self.catalog)

    def _loop(self) -> End:
        o = self.o
        self._warm()
        # after the warm-up: scipy loads its own OpenBLAS on first use
        self._limits.enter_context(_blas_single_thread())
        run_dir = Path(o.run_dir)
        announced = False
        analysis_due = 0.0
        dirty = False
        walked = 0.0
        while True:
            now = time.monotonic()
            if not run_dir.is_dir():
                if not announced:
                    self._note(f"lorascope watch: waiting for {run_dir} to appear")
                    announced = True
                if now - self.last_change >= o.idle_timeout:
                    return End("idle", f"{run_dir} did not appear in {o.idle_timeout:g} s")
                time.sleep(o.interval)
                continue
            if self.notifier is None:
                self.notifier = Notifier(run_dir, o.notifications)
                how = (f"{self.notifier.kind} notifications, and a poll every {o.interval:g} s"
                       if self.notifier.active else f"polling every {o.interval:g} s"
                       + (f"; {self.notifier.why}" if self.notifier.why else ""))
                self._note(f"lorascope watch: following {run_dir} ({how}); Ctrl-C ends with the "
                           "report on the run so far")
                woke = True
            else:
                wait = o.interval
                if dirty:
                    wait = min(wait, max(0.0, analysis_due - now))
                woke = self.notifier.wait(wait)
                if woke:
                    time.sleep(0.02)          # the rest of the trainer's burst of writes
            now = now0 = time.monotonic()
            # list the folder again when the tree changed, at least every WALK_EVERY s,
            # and when polling as often as the walk's own cost allows
            walk = self.notifier.tree_changed() or now - walked >= WALK_EVERY or (
                not self.notifier.active and now - walked >= 20 * self.follower.walk_cost)
            changed = False
            if walk:
                changed |= self.follower.walk()
                walked = now
            changed |= self.follower.poll(final=False)
            now = time.monotonic()
            if changed:
                self.last_change = now
                self.seen_data = True
                dirty = True
            if dirty and now >= analysis_due:
                dirty = False
                t0 = time.monotonic()
                self._live()
                done = time.monotonic()
                if self.debug:
                    self._write(f"watch: {_stamp()} read {t0 - now0:.3f}s, analysis {done - t0:.3f}s "
                                f"at step {self.step}", err=True)
                analysis_due = done + max(self.cost, MIN_GAP)   # at most half of the time analysing
            end = self._end(time.monotonic())
            if end is not None and not dirty:
                return end

    def _finish(self, end: End) -> int:
        final = end.kind in ("finished", "idle")
        from lorascope.pipeline import report_document
        try:
            self.follower.walk()
            self.follower.poll(final=final)
            a = self._analyse(final=final, others=True)
        except OSError as e:
            a = None
            self._write(f"lorascope: {self.o.run_dir}: {e.strerror or e}", err=True)
        if a is None:
            self._write(f"lorascope: {self.o.run_dir}: nothing readable (no event file, trainer "
                        "state, log, config or checkpoint with content)", err=True)
            if self.o.fmt == "json":
                self._emit_json({"event": "final", "time": round(time.time(), 3), "reason": end.kind,
                                 "detail": end.detail, "exit_status": EXIT_USAGE, "report": None})
            return EXIT_USAGE
        self.step = a.run.steps.last
        if final:
            shown, prov = list(a.findings), {}
        else:
            shown, prov = live_findings(a.findings, a.run)
        for ch in self.tracker.update(shown, prov, tolerance(a.run), final=True):
            self._emit(ch)
        a = replace(a, findings=shown)
        doc = report_document(a)
        if self.o.html:
            self._html(a)
        for t in self.hooks:
            t.join(timeout=30)
        status = EXIT_USAGE if self.errors else (
            EXIT_FINDINGS if any(f["severity"] in self.levels for f in doc["findings"]) else EXIT_OK)
        provisional = sorted({f.rule for f in shown if id(f) in prov})
        if self.o.fmt == "json":
            obj = {"event": "final", "time": round(time.time(), 3), "reason": end.kind,
                   "detail": end.detail, "exit_status": status, "provisional": provisional,
                   "html": self.html_written, "report": doc}
            self._emit_json(obj)
        else:
            from lorascope.report.text import render_text
            what = {"finished": "run finished", "idle": "run idle",
                    "interrupted": "stopped"}[end.kind]
            self._write(f"{_stamp()}  {what}: {self._visible(end.detail)}"
                        + ("" if final else " - the report on the run so far:"))
            self._write("")
            self._write(render_text(doc, color=self.o.color, html_path=self.html_written))
            if provisional:
                self._write("")
                self._write(f"provisional (judged on the run so far): {', '.join(provisional)}")
        return status

    @staticmethod
    def _visible(s: str) -> str:
        from lorascope.report.safe import visible
        return visible(s)


def watch(opts: Options, out=None, err=None) -> int:
    return Watch(opts, out, err).run()
