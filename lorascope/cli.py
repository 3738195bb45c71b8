"""Command line: the only place that picks exit codes (CONTRACT §1)."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from lorascope import __version__

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
FAIL_LEVELS = {"critical": ("critical",), "warning": ("critical", "warning"), "never": ()}


def _safe(text: str) -> str:
    """Text that any UTF-8 stream can take: a file name that is not UTF-8 (or a
    lone surrogate escaped in a JSON file) is shown with '?' instead of crashing."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _err(msg: str) -> None:
    """One line on stderr: control characters from a path or a file are escaped
    (a newline in a run name cannot make it two lines, nor ESC reach the terminal)."""
    from lorascope.report.safe import visible
    click.echo(_safe(visible(f"lorascope: {msg}")), err=True)


def _die(msg: str) -> None:
    _err(msg)
    sys.exit(EXIT_USAGE)


def _dump(doc: dict) -> str:
    from lorascope.report.dump import dumps     # json.dumps(indent=2)'s text, faster
    from lorascope.report.safe import json_safe
    return _safe(json_safe(dumps(doc)))


def _debug() -> bool:
    return bool(os.environ.get("LORASCOPE_DEBUG") or os.environ.get("LORASCOPE_STRICT"))


@functools.lru_cache(maxsize=4)
def _catalog(rules_file: Path | None) -> dict:
    """The rule catalog, read once per process (a batch's workers inherit it)."""
    from lorascope.rules.registry import load_catalog
    return load_catalog(rules_file)


def _analyze_one(args: tuple) -> tuple:
    """Worker: (run_dir, rules, html_target|None, progress, run id|None[, jobs]) ->
    (run_dir, doc, html written, error, html error, sweep curve).

    Whatever goes wrong inside one run's analysis (a parser or rule bug, a recursion or
    memory limit) becomes that run's error: the other runs of a batch are still reported.
    A report that cannot be written is an html error beside the document.  The sweep
    curve is the run's training loss, reduced, for the batch's index page (small: the
    Run itself never leaves the worker)."""
    run_dir, rules_file, html_target, progress, run_id = args[:5]
    jobs = args[5] if len(args) > 5 else None
    from lorascope.pipeline import NoSuchRun, analyze, report_document
    from lorascope.build import Unreadable
    from lorascope.rules.registry import CatalogError
    try:
        a = analyze(run_dir, catalog=_catalog(rules_file), progress=progress, run_id=run_id, jobs=jobs)
        doc = report_document(a)
    except (Unreadable, CatalogError, NoSuchRun) as e:
        return run_dir, None, None, str(e), None, None
    except MemoryError:
        return run_dir, None, None, f"{run_dir}: out of memory while analysing this run", None, None
    except RecursionError:
        if _debug():
            raise
        return run_dir, None, None, f"{run_dir}: nested too deeply to analyse (recursion limit)", None, None
    except Exception as e:  # never lose the batch for one run
        if _debug():
            raise
        return (run_dir, None, None, f"{run_dir}: internal error: {type(e).__name__}: {str(e)[:200]}",
                None, None)
    written = html_err = curve = None
    if html_target is not None:
        try:
            from lorascope.report.charts import sweep_curve
            from lorascope.report.html import write_html
            from lorascope.report.paths import ReportWriteError
        except ImportError:
            write_html = None
        if write_html is not None:
            try:
                written = str(write_html(a, doc, Path(html_target), [run_dir]))
                curve = sweep_curve(a.run)
            except ReportWriteError as e:
                html_err = str(e)
            except MemoryError:
                html_err = f"out of memory while writing the report {html_target}"
            except Exception as e:
                if _debug():
                    raise
                html_err = f"cannot write the report {html_target}: {type(e).__name__}: {str(e)[:200]}"
    return run_dir, doc, written, None, html_err, curve


def _inside(target: Path, run_dir: Path) -> bool:
    try:
        target.resolve().relative_to(run_dir.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


PRELOAD = ("lorascope.pipeline", "lorascope.signals", "lorascope.imagesim", "lorascope.report.html",
           "lorascope.report.charts", "lorascope.report.sweep", "scipy.ndimage", "scipy.stats",
           "ruptures", "yaml", "PIL.Image")


def _preload(rules_file: Path | None = None) -> None:
    """Import what analysing a run needs (every parser, trainer layout, rule and curve
    module, and the libraries they import on first use: about a second) and read the
    catalog, once: forked workers start with all of it, instead of each paying it on its
    first run."""
    import importlib
    import pkgutil
    for pkg in ("lorascope.ingest", "lorascope.trainers", "lorascope.curves", "lorascope.rules"):
        try:
            mod = importlib.import_module(pkg)
            names = [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)]
        except ImportError:
            continue
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    try:
        _catalog(rules_file)
    except Exception:  # noqa: BLE001 - each run reports a broken catalog itself
        pass


def _pool_context():
    """Fork where it is safe (Linux): workers start in milliseconds with the parent's
    imports.  Elsewhere the platform's default, each worker preloading once."""
    import multiprocessing as mp
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return None


def _run_pool(tasks: list[tuple], jobs: int) -> list[tuple]:
    """Analyse in worker processes that start once and take run after run (each run on
    one core: the batch is the parallelism).  A worker that dies (killed for memory, a
    signal) breaks the pool for every pending task: those are tried again one at a time,
    so only the run that kills its worker is reported as lost."""
    from concurrent.futures import ProcessPoolExecutor      # here: `inspect` needs none of it
    from concurrent.futures.process import BrokenProcessPool
    ctx = _pool_context()
    rules_file = tasks[0][1] if tasks else None
    if ctx is not None:
        _preload(rules_file)
        init, initargs = None, ()
    else:
        init, initargs = _preload, (rules_file,)
    tasks = [tuple(t[:5]) + (1,) for t in tasks]

    def lost(i: int, e: Exception) -> tuple:
        return (tasks[i][0], None, None, f"{tasks[i][0]}: internal error: "
                f"{type(e).__name__}: {str(e)[:200]}", None, None)
    results: list[tuple | None] = [None] * len(tasks)
    retry = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                             initializer=init, initargs=initargs) as ex:
        futs = [ex.submit(_analyze_one, t) for t in tasks]
        for i, f in enumerate(futs):
            try:
                results[i] = f.result()
            except BrokenProcessPool:
                retry.append(i)
            except Exception as e:
                results[i] = lost(i, e)
    for i in retry:
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=init,
                                     initargs=initargs) as ex:
                results[i] = ex.submit(_analyze_one, tasks[i]).result()
        except BrokenProcessPool:
            results[i] = (tasks[i][0], None, None,
                          f"{tasks[i][0]}: the process analysing this run died (killed, or out of memory)",
                          None, None)
        except Exception as e:
            results[i] = lost(i, e)
    return results  # type: ignore[return-value]


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Cli(click.Group):
    """The command group, with click's usage errors (`--jobs 0`, a missing argument)
    printed as one line, `lorascope: <reason>`, exit 2, like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_HELP as e:                        # bare `lorascope`: the help
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            _err(e.format_message().replace("\n", " "))
            sys.exit(EXIT_USAGE)
        except click.Abort:
            _err("aborted")
            sys.exit(EXIT_USAGE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorascope")
def cli() -> None:
    """lorascope: the post-mortem of a LoRA fine-tuning run."""


def _html_targets(run_dirs: tuple, html: str | None, several: bool) -> list[Path]:
    """Where each run's report goes: --html itself for one run; else <folder>/<name>.html
    with names from :func:`~lorascope.report.paths.report_names` (safe, unique, never
    the index's)."""
    from lorascope.report.paths import report_names
    if html is not None and not several:
        return [Path(html)]
    folder = Path(html) if html is not None else Path("lorascope-report")
    return [folder / f"{n}.html" for n in report_names(list(run_dirs), index=several)]


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--html", "html", type=click.Path(), default=None,
              help="Where to write the HTML report (default lorascope-report/<run>.html; "
                   "with several runs, a directory).")
@click.option("--no-html", is_flag=True, help="Do not write an HTML report.")
@click.option("--fail-on", type=click.Choice(["critical", "warning", "never"]), default="critical",
              show_default=True, help="Exit 1 when a finding at or above this severity exists.")
@click.option("--rules", "rules_file", type=click.Path(), default=None,
              help="TOML file overriding rule severities and thresholds.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Analyze this many runs in parallel.")
@click.option("--run", "run_id", default=None, metavar="ID",
              help="A folder holding several runs: report on this one (run-1 is the oldest; "
                   "default: the latest).")
def analyze(run_dirs, fmt, html, no_html, fail_on, rules_file, jobs, run_id):
    """Analyze one or more trainer output directories."""
    from lorascope.rules.registry import CatalogError
    if html and no_html:
        _die("--html and --no-html exclude each other")
    if rules_file:
        try:
            _catalog(Path(rules_file))
        except CatalogError as e:
            _die(str(e))
    several = len(run_dirs) > 1
    progress = sys.stderr.isatty()
    targets = [None] * len(run_dirs) if no_html else _html_targets(run_dirs, html, several)
    tasks = [(d, Path(rules_file) if rules_file else None, None if t is None else str(t), progress, run_id)
             for d, t in zip(run_dirs, targets)]
    if jobs > 1 and several:
        results = _run_pool(tasks, jobs)
    else:
        results = [_analyze_one(t) for t in tasks]

    exit_code = EXIT_OK
    docs, htmls, errors, curves = [], [], [], []
    for run_dir, doc, written, err, html_err, curve in results:
        if html_err:
            _err(html_err)
            exit_code = EXIT_USAGE
        if err:
            _err(err)
            errors.append({"path": str(run_dir), "error": err})
            exit_code = EXIT_USAGE
            continue
        docs.append(doc)
        htmls.append(written)
        curves.append(curve)
    if several and not no_html and len(docs) + len(errors) > 1:
        try:
            from lorascope.report.html import write_index
            from lorascope.report.paths import ReportWriteError
            index = Path(html if html is not None else "lorascope-report") / "index.html"
            try:
                write_index(docs, htmls, index, errors, list(run_dirs), curves=curves)
                if fmt == "text":
                    _err(f"index: {index}")
            except ReportWriteError as e:
                _err(str(e))
                exit_code = EXIT_USAGE
        except ImportError:
            pass
    if fmt == "json":
        if several:
            from lorascope.report.sweep import comparison
            batch = {"schema": "lorascope.batch/1", "reports": docs}
            if errors:
                batch["errors"] = errors
            batch["comparison"] = comparison(docs)
            click.echo(_dump(batch))
        elif docs:
            click.echo(_dump(docs[0]))
    else:
        from lorascope.report.text import render_text
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        for i, (doc, h) in enumerate(zip(docs, htmls)):
            if i:
                click.echo("")
            click.echo(_safe(render_text(doc, color=color, html_path=h)))
    if exit_code == EXIT_OK:
        levels = FAIL_LEVELS[fail_on]
        if any(f["severity"] in levels for d in docs for f in d["findings"]):
            exit_code = EXIT_FINDINGS
    sys.exit(exit_code)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between polls (a backup where change notifications work).")
@click.option("--fail-on", type=click.Choice(["critical", "warning", "never"]), default="critical",
              show_default=True, help="Exit 1 when the final report has a finding at or above this "
                                      "severity; --on-finding fires at it.")
@click.option("--on-finding", "on_finding", default=None, metavar="CMD",
              help="Shell command run when a finding at or above --fail-on appears, with the "
                   "finding as JSON on stdin (e.g. to stop the trainer or to notify).")
@click.option("--html", "html", type=click.Path(), default=None,
              help="Keep an HTML report at this path current.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per event on stdout (appeared / withdrawn / final).")
@click.option("--rules", "rules_file", type=click.Path(), default=None,
              help="TOML file overriding rule severities and thresholds.")
@click.option("--idle-timeout", type=click.FloatRange(1, None), default=1800, show_default=True,
              help="End when nothing new was written for this many seconds.")
@click.option("--poll", is_flag=True, default=False,
              help="Poll every --interval seconds instead of using the file system's change "
                   "notifications (e.g. on a network file system written from another machine).")
def watch(run_dir, interval, fail_on, on_finding, html, fmt, rules_file, idle_timeout, poll):
    """Follow a run while it trains: print each finding as it appears."""
    from lorascope.report.paths import ReportWriteError, check_target
    from lorascope.rules.registry import CatalogError, load_catalog
    from lorascope.watch import Options
    from lorascope.watch import watch as run_watch
    if rules_file:
        try:
            load_catalog(Path(rules_file))
        except CatalogError as e:
            _die(str(e))
    if html:
        try:
            check_target(Path(html), [run_dir])
        except ReportWriteError as e:
            _die(str(e))
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    opts = Options(run_dir=Path(run_dir), interval=interval, fail_on=fail_on, on_finding=on_finding,
                   html=Path(html) if html else None, fmt=fmt,
                   rules_file=Path(rules_file) if rules_file else None,
                   idle_timeout=idle_timeout, settle=max(2.0, interval), color=color,
                   notifications=not poll)
    sys.exit(run_watch(opts))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def inspect(files, fmt):
    """Show what is inside LoRA safetensors files (format, rank, alpha, per-layer norms)."""
    try:
        from lorascope.inspect import exit_status, inspect_files, render_inspect_text
    except ImportError:
        _die("inspect is not available in this build")
    doc = inspect_files([Path(f) for f in files])
    if fmt == "json":
        click.echo(_dump(doc))
    else:
        click.echo(_safe(render_inspect_text(doc)))
    status = exit_status(doc)       # a file cut short is not a readable one (CONTRACT §6)
    if status == EXIT_USAGE:
        for f in doc["files"]:
            _err(f"{f['path']}: {'; '.join(f['problems'][:2])}")
    sys.exit(status)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--rules", "rules_file", type=click.Path(), default=None,
              help="TOML file overriding rule severities and thresholds.")
def rules(fmt, rules_file):
    """Print the rule catalog with each rule's documentation."""
    from lorascope.rules.catalog_doc import catalog_document, render_catalog_text
    from lorascope.rules.registry import CatalogError
    try:
        doc = catalog_document(Path(rules_file) if rules_file else None)
    except CatalogError as e:
        _die(str(e))
    if fmt == "json":
        click.echo(_dump(doc))
    else:
        from lorascope.report.safe import visible_tree
        click.echo(_safe(render_catalog_text(visible_tree(doc))))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--fix", is_flag=True, required=True, help="Apply the diagnosed fix (required).")
@click.option("--from-step", type=int, default=None, help="Resume from the checkpoint at or before this step.")
@click.option("--steps", type=click.IntRange(1, None), default=None, help="How many steps to replay.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Output folder (default lorascope-rerun/).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--cmd", "cmd", default=None, help='External trainer command, e.g. "llamafactory-cli train {config}".')
@click.option("--rule", "rule_id", default=None, help="Which diagnosis to test (default: the most severe step-bound one).")
@click.option("--baseline/--no-baseline", default=False, help="First replay without the fix to confirm the symptom.")
def rerun(run_dir, fix, from_step, steps, device, out, fmt, cmd, rule_id, baseline):
    """Resume before the failure with the fix applied, and verify the symptom is gone."""
    try:
        from lorascope.rerun.cli import rerun_command
    except ImportError as e:
        _die(f"rerun needs the rerun extra (pip install 'lorascope[rerun]'): {e}")
    rerun_command(run_dir=run_dir, from_step=from_step, steps=steps, device=device, out=out,
                  fmt=fmt, cmd=cmd, rule_id=rule_id, baseline=baseline)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # never a traceback for the user
        if os.environ.get("LORASCOPE_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {str(e)[:300]} "
             f"(set LORASCOPE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
