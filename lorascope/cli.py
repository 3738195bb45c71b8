"""Command line: the only place that picks exit codes (CONTRACT §1)."""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click

from lorascope import __version__

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
FAIL_LEVELS = {"critical": ("critical",), "warning": ("critical", "warning"), "never": ()}


def _safe(text: str) -> str:
    """Text that any UTF-8 stream can take: a file name that is not UTF-8 (or a
    lone surrogate escaped in a JSON file) is shown with '?' instead of crashing."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _die(msg: str) -> None:
    click.echo(_safe(f"lorascope: {msg}"), err=True)
    sys.exit(EXIT_USAGE)


def _dump(doc: dict) -> str:
    return _safe(json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False))


def _html_target(run_name: str, html: str | None, several: bool) -> Path:
    if html is None:
        return Path("lorascope-report") / f"{run_name}.html"
    p = Path(html)
    return p / f"{run_name}.html" if several else p


def _analyze_one(args: tuple) -> tuple[str, dict | None, str | None, str | None]:
    """Worker: (run_dir, rules, html_target|None, progress) -> (run_dir, doc, html, error)."""
    run_dir, rules_file, html_target, progress, run_id = args
    from lorascope.analyze import NoSuchRun, analyze, report_document
    from lorascope.build import Unreadable
    from lorascope.rules.registry import CatalogError
    try:
        a = analyze(run_dir, rules_file, progress=progress, run_id=run_id)
    except (Unreadable, NoSuchRun) as e:
        return run_dir, None, None, str(e)
    except CatalogError as e:
        return run_dir, None, None, str(e)
    doc = report_document(a)
    written = None
    if html_target is not None:
        try:
            from lorascope.report.html import write_html
        except ImportError:
            write_html = None
        if write_html is not None:
            target = Path(html_target)
            if _inside(target, Path(run_dir)):
                return run_dir, None, None, f"refusing to write the report inside the run directory: {target}"
            write_html(a, doc, target)
            written = str(target)
    return run_dir, doc, written, None


def _inside(target: Path, run_dir: Path) -> bool:
    try:
        target.resolve().relative_to(run_dir.resolve())
        return True
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorascope")
def cli() -> None:
    """lorascope: the post-mortem of a LoRA fine-tuning run."""


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
    from lorascope.rules.registry import CatalogError, load_catalog
    if html and no_html:
        _die("--html and --no-html exclude each other")
    if rules_file:
        try:
            load_catalog(Path(rules_file))
        except CatalogError as e:
            _die(str(e))
    several = len(run_dirs) > 1
    progress = sys.stderr.isatty()
    tasks = []
    for d in run_dirs:
        name = Path(d).resolve().name or "run"
        target = None if no_html else str(_html_target(name, html, several))
        tasks.append((d, Path(rules_file) if rules_file else None, target, progress, run_id))
    if jobs > 1 and several:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as ex:
            results = list(ex.map(_analyze_one, tasks))
    else:
        results = [_analyze_one(t) for t in tasks]

    exit_code = EXIT_OK
    docs = []
    htmls = []
    for run_dir, doc, written, err in results:
        if err:
            click.echo(_safe(f"lorascope: {err}"), err=True)
            exit_code = EXIT_USAGE
            continue
        docs.append(doc)
        htmls.append(written)
    if several and not no_html and len(docs) > 1:
        try:
            from lorascope.report.html import write_index
            index = _html_target("index", html, True)
            write_index(docs, htmls, index)
            if fmt == "text":
                click.echo(f"index: {index}", err=True)
        except ImportError:
            pass
    if fmt == "json":
        if several:
            click.echo(_dump({"schema": "lorascope.batch/1", "reports": docs}))
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
            click.echo(_safe(f"lorascope: {f['path']}: {'; '.join(f['problems'][:2])}"), err=True)
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
    click.echo(_dump(doc) if fmt == "json" else render_catalog_text(doc))


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
        click.echo("lorascope: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # never a traceback for the user
        if os.environ.get("LORASCOPE_DEBUG"):
            raise
        click.echo(f"lorascope: internal error: {type(e).__name__}: {e} "
                   f"(set LORASCOPE_DEBUG=1 for the traceback)", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
