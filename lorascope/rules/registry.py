"""The rule registry and the catalog of thresholds, severities and texts.

A rule is a small pure function registered with :func:`rule`::

    @rule("loss.spike", needs=("train_loss",))
    def loss_spike(run: Run, p: Params) -> list[Finding]:
        '''One-line summary.

        ## What it detects
        ...
        ## Why it matters
        ...
        ## Example
        ...
        ## Fix
        ...
        '''
        return [p.finding(title="...", step=1250, evidence=[...])]

Its thresholds, default severity, summary, rationale, candidate causes and
default fix live in the catalog (top-level ``rules/<family>.toml``), not in code.
``--rules FILE`` overlays the catalog with a user's TOML of the same shape.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorascope.model import Finding, Run

DOC_SECTIONS = ("What it detects", "Why it matters", "Example", "Fix")
SEVERITIES = ("critical", "warning", "info")
ROLE_NEEDS = ("train_loss", "eval_loss", "lr", "grad_norm")
ATTR_NEEDS = ("checkpoints", "datasets", "events", "config", "samples")


@dataclass
class RuleSpec:
    id: str
    func: Callable[[Run, "Params"], list[Finding]]
    needs: tuple[str, ...]

    @property
    def doc(self) -> str:
        return self.func.__doc__ or ""


REGISTRY: dict[str, RuleSpec] = {}


def rule(rule_id: str, needs: tuple[str, ...] = ()):
    """Register a rule function under its catalog id."""
    for n in needs:
        if n not in ROLE_NEEDS + ATTR_NEEDS:
            raise ValueError(f"{rule_id}: unknown need {n!r}")

    def deco(func):
        if rule_id in REGISTRY and REGISTRY[rule_id].func is not func:
            raise ValueError(f"rule {rule_id} registered twice")
        REGISTRY[rule_id] = RuleSpec(rule_id, func, tuple(needs))
        return func
    return deco


def load_rule_modules() -> dict[str, RuleSpec]:
    """Import every module of the lorascope.rules package so that rules register."""
    import lorascope.rules as pkg
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name != "registry":
            importlib.import_module(f"lorascope.rules.{m.name}")
    return REGISTRY


class Context:
    """What the rules of one run share: the whole catalog and the curve-analysis stage's
    result (computed once, on first use, for the run being analysed)."""

    def __init__(self, catalog: dict[str, dict]):
        self.catalog = catalog
        self._curves: tuple[int, Any] | None = None

    def curves(self, run: Run):
        if self._curves is None or self._curves[0] != id(run):
            from lorascope.curves import analyze_curves
            self._curves = (id(run), analyze_curves(run, self.catalog))
        return self._curves[1]


@dataclass
class Params:
    """What a rule reads from the catalog: severity, thresholds, texts, and (through its
    context) what the stages before the rules computed for the run."""

    rule_id: str
    entry: dict[str, Any] = field(default_factory=dict)
    context: Context | None = None

    def curves(self, run: Run):
        """The run's curve analysis (:mod:`lorascope.curves`): its episodes and owners."""
        if self.context is None:
            self.context = Context({**load_catalog(), self.rule_id: self.entry})
        return self.context.curves(run)

    @property
    def severity(self) -> str:
        return self.entry.get("severity", "warning")

    @property
    def summary(self) -> str:
        return self.entry.get("summary", self.rule_id)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.entry["params"][key]
        except KeyError:
            raise KeyError(f"catalog entry {self.rule_id} has no param {key!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.entry.get("params", {}).get(key, default)

    def finding(self, title: str, *, severity: str | None = None, **kw) -> Finding:
        """A Finding of this rule with the catalog's severity (or an explicit one,
        e.g. a rule that downgrades itself when the evidence is weak)."""
        return Finding(rule=self.rule_id, severity=severity or self.severity, title=title, **kw)


# -- catalog ----------------------------------------------------------------------

def data_dir(name: str) -> Path:
    """Top-level data folder (``rules`` or ``reports/templates``): inside the wheel it
    is packaged under ``lorascope/_data/``; in a checkout it sits beside the package."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_data" / name
    if packaged.is_dir():
        return packaged
    return here.parent / name


def catalog_dir() -> Path:
    return data_dir("rules")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class CatalogError(ValueError):
    pass


def load_catalog(override: Path | None = None) -> dict[str, dict]:
    """All ``rules/*.toml`` merged into {rule_id: entry}, overlaid by ``override``."""
    cat: dict[str, dict] = {}
    for f in sorted(catalog_dir().glob("*.toml")):
        with open(f, "rb") as fh:
            for rid, entry in tomllib.load(fh).items():
                if rid in cat:
                    raise CatalogError(f"{f.name}: rule {rid} defined twice")
                cat[rid] = entry
    if override is not None:
        try:
            with open(override, "rb") as fh:
                user = tomllib.load(fh)
        except OSError as e:
            raise CatalogError(f"cannot read rules file {override}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise CatalogError(f"rules file {override} is not valid TOML: {e}") from None
        user = user.get("rules", user) if isinstance(user.get("rules"), dict) else user
        for rid, entry in user.items():
            if rid not in cat:
                raise CatalogError(f"rules file {override}: unknown rule id {rid!r}")
            if not isinstance(entry, dict):
                raise CatalogError(f"rules file {override}: {rid} must be a table")
            sev = entry.get("severity")
            if sev is not None and is_stage(cat[rid]):
                raise CatalogError(f"rules file {override}: {rid} is a stage, it has no severity")
            if sev is not None and sev not in SEVERITIES + ("off",):
                raise CatalogError(f"rules file {override}: {rid}.severity must be one of "
                                   f"{', '.join(SEVERITIES + ('off',))}")
            for k, v in entry.get("params", {}).items():
                if k not in cat[rid].get("params", {}):
                    raise CatalogError(f"rules file {override}: {rid} has no param {k!r}")
                if type(v) is not type(cat[rid]["params"][k]) and not (
                        isinstance(v, (int, float)) and isinstance(cat[rid]["params"][k], (int, float))):
                    raise CatalogError(f"rules file {override}: {rid}.params.{k} has the wrong type")
            cat[rid] = _merge(cat[rid], entry)
    return cat


def params_for(rule_id: str, catalog: dict[str, dict], context: Context | None = None) -> Params:
    return Params(rule_id, catalog.get(rule_id, {}), context or Context(catalog))


def is_stage(entry: dict) -> bool:
    """A catalog entry of a stage (``kind = "stage"``): thresholds, no rule, no severity."""
    return isinstance(entry, dict) and entry.get("kind") == "stage"


def rule_entries(catalog: dict[str, dict]) -> dict[str, dict]:
    """The catalog's rules (stages left out)."""
    return {k: v for k, v in catalog.items() if not is_stage(v)}
