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
import math
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


MAX_RULES_BYTES = 1024 * 1024          # a --rules file larger than this is refused
MAX_RULES_DEPTH = 5                    # [rules] > rule > params > list > item
ENTRY_KEYS = {"severity", "summary", "rationale", "params", "causes", "fix", "bounds"}
MAX_TEXT = 4000                        # characters of a summary, rationale or string param
MAX_LIST = 10_000                      # items of a list param
MAX_COUNT = 10 ** 9                    # an integer param above this is no count
# name parts that say what a number means, when the catalog gives no [rule.bounds] for it
_UNIT = (("percentile", (0, False, 100)),
         ("fraction", (0, False, 1)), ("frac", (0, False, 1)), ("share", (0, False, 1)),
         ("confidence", (0, False, 1)), ("prob", (0, False, 1)), ("quantile", (0, False, 1)),
         ("ratio", (0, True, None)), ("spread", (0, True, None)), ("growth", (0, True, None)),
         ("margin", (0, True, None)))


def _read_rules_file(path: Path) -> dict:
    """A user's rules file: a regular file of at most MAX_RULES_BYTES, UTF-8 TOML,
    nested at most MAX_RULES_DEPTH levels.  Opened non-blocking, so a FIFO cannot hang
    the command, and checked with fstat, so a device (``/dev/zero``) is never read."""
    import os
    import stat
    from lorascope.ingest._json import NestedTooDeep, check_depth
    from lorascope.safe_open import NotRegular, open_regular
    try:
        fd = open_regular(path)
    except NotRegular as e:
        raise CatalogError(f"rules file {path}: {e.strerror}") from None
    except OSError as e:
        raise CatalogError(f"cannot read rules file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CatalogError(f"rules file {path} is not a regular file")
        if st.st_size > MAX_RULES_BYTES:
            raise CatalogError(f"rules file {path} is {st.st_size} bytes, larger than "
                               f"{MAX_RULES_BYTES}: not read")
        chunks, total = [], 0
        while total <= MAX_RULES_BYTES:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        if total > MAX_RULES_BYTES:
            raise CatalogError(f"rules file {path} grew past {MAX_RULES_BYTES} bytes while read")
    except OSError as e:
        raise CatalogError(f"cannot read rules file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CatalogError(f"rules file {path} is not UTF-8 (byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
        return check_depth(doc, MAX_RULES_DEPTH)
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"rules file {path} is not valid TOML: {e}") from None
    except (RecursionError, NestedTooDeep):
        raise CatalogError(f"rules file {path} is nested too deeply "
                           f"(a rules file has at most {MAX_RULES_DEPTH} levels)") from None


def _bound(entry: dict, name: str, default: Any) -> tuple[float | None, bool, float | None]:
    """(low, low exclusive, high) for a numeric param: the catalog's ``[rule.bounds]``
    (``name = {ge = 0, le = 1}``, ``gt``/``lt`` for strict bounds) or, without one, what
    the name and the default say: fractions, shares, probabilities and confidences lie
    in [0, 1], a percentile in [0, 100], ratios, spreads, growths and margins are > 0, and
    any other param whose default is not negative must not be negative."""
    b = (entry.get("bounds") or {}).get(name)
    if isinstance(b, dict):
        lo = b.get("gt", b.get("ge"))
        hi = b.get("lt", b.get("le"))
        return lo, "gt" in b, hi
    low = name.lower()
    for part, rng in _UNIT:
        if part in low:
            return rng
    return (0, False, None) if default >= 0 else (None, False, None)


def _check_value(where: str, name: str, v: Any, default: Any, entry: dict) -> None:
    """One user param against the built-in default's type and the param's range."""
    def bad(why: str) -> CatalogError:
        return CatalogError(f"{where}.{name} {why}")
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad("must be true or false")
        return
    if isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(f"must be a whole number, not {v!r}"[:200])
        if abs(v) > MAX_COUNT:
            raise bad(f"is too large ({v})"[:200])
    elif isinstance(default, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"must be a number, not {type(v).__name__}")
        if not math.isfinite(v):
            raise bad(f"must be a finite number, not {v}")
    elif isinstance(default, str):
        if not isinstance(v, str) or len(v) > MAX_TEXT:
            raise bad("must be a string" + (f" of at most {MAX_TEXT} characters" if isinstance(v, str) else ""))
        if default in SEVERITIES and v not in SEVERITIES:
            raise bad(f"must be one of {', '.join(SEVERITIES)}")
        return
    elif isinstance(default, list):
        if not isinstance(v, list) or len(v) > MAX_LIST:
            raise bad("must be a list" + (f" of at most {MAX_LIST} items" if isinstance(v, list) else ""))
        kinds = {type(x) for x in default}
        for x in v:
            if kinds and type(x) not in kinds or isinstance(x, (list, dict)):
                raise bad(f"holds {type(x).__name__} items; the catalog's are "
                          f"{', '.join(sorted(k.__name__ for k in kinds)) or 'scalars'}")
            if isinstance(x, str) and len(x) > MAX_TEXT:
                raise bad(f"holds a string longer than {MAX_TEXT} characters")
            if isinstance(x, float) and not math.isfinite(x):
                raise bad("holds a number that is not finite")
        return
    else:
        if type(v) is not type(default):
            raise bad("has the wrong type")
        return
    lo, lo_open, hi = _bound(entry, name, default)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise bad(f"must be {'>' if lo_open else '>='} {lo}, not {v}")
    if hi is not None and v > hi:
        raise bad(f"must be <= {hi}, not {v}")


def validate_override(rid: str, entry: Any, base: dict, cat: dict, where: str) -> None:
    """A user's catalog entry for ``rid``: known keys of the right shape, params that
    the built-in entry has, of its types, finite and within range; causes naming known
    rules with confidences in [0, 1]; fix values that are finite numbers, booleans or
    strings.  Generic: driven by the built-in entry, so a param added to the catalog is
    validated without code."""
    from lorascope.model import CONTRACT_CONFIG_KEYS, EXTRA_CONFIG_KEYS
    w = f"{where}: {rid}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{w} must be a table")
    unknown = sorted(set(entry) - ENTRY_KEYS - {"bounds"})
    if unknown:
        raise CatalogError(f"{w} has unknown key {unknown[0]!r} (allowed: {', '.join(sorted(ENTRY_KEYS - {'bounds'}))})")
    if "bounds" in entry:
        raise CatalogError(f"{w}: bounds belong to the built-in catalog, not a rules file")
    sev = entry.get("severity")
    if sev is not None and is_stage(base):
        raise CatalogError(f"{w} is a stage, it has no severity")
    if sev is not None and sev not in SEVERITIES + ("off",):
        raise CatalogError(f"{w}.severity must be one of {', '.join(SEVERITIES + ('off',))}")
    if "kind" in entry:
        raise CatalogError(f"{w}.kind belongs to the built-in catalog, not a rules file")
    for k in ("summary", "rationale"):
        if k in entry and (not isinstance(entry[k], str) or len(entry[k]) > MAX_TEXT):
            raise CatalogError(f"{w}.{k} must be a string of at most {MAX_TEXT} characters")
    for k in ("params", "causes", "fix"):
        if k in entry and not isinstance(entry[k], dict):
            raise CatalogError(f"{w}.{k} must be a table")
    defaults = base.get("params", {})
    for k, v in entry.get("params", {}).items():
        if k not in defaults:
            raise CatalogError(f"{w} has no param {k!r}")
        _check_value(f"{w}.params", k, v, defaults[k], base)
    for k, v in entry.get("causes", {}).items():
        if k not in cat:
            raise CatalogError(f"{w}.causes names an unknown rule id {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise CatalogError(f"{w}.causes.{k} must be a confidence between 0 and 1")
    keys = set(CONTRACT_CONFIG_KEYS) | set(EXTRA_CONFIG_KEYS)
    for k, v in entry.get("fix", {}).items():
        if k not in keys:
            raise CatalogError(f"{w}.fix.{k} is not a normalized config key")
        if isinstance(v, float) and not math.isfinite(v):
            raise CatalogError(f"{w}.fix.{k} must be a finite number")
        if not isinstance(v, (bool, int, float, str)) or (isinstance(v, str) and len(v) > MAX_TEXT):
            raise CatalogError(f"{w}.fix.{k} must be a number, a boolean or a short string")
        if isinstance(v, str) and v.startswith("*"):
            try:
                f = float(v[1:])
            except ValueError:
                f = float("nan")
            if not math.isfinite(f) or f <= 0:
                raise CatalogError(f"{w}.fix.{k}: a relative fix is '*' and a positive factor, not {v!r}"[:200])


def load_catalog(override: Path | None = None) -> dict[str, dict]:
    """All ``rules/*.toml`` merged into {rule_id: entry}, overlaid by ``override``
    (validated: see :func:`validate_override`; any problem is a CatalogError)."""
    cat: dict[str, dict] = {}
    for f in sorted(catalog_dir().glob("*.toml")):
        with open(f, "rb") as fh:
            for rid, entry in tomllib.load(fh).items():
                if rid in cat:
                    raise CatalogError(f"{f.name}: rule {rid} defined twice")
                cat[rid] = entry
    if override is not None:
        user = _read_rules_file(Path(override))
        user = user.get("rules", user) if isinstance(user.get("rules"), dict) else user
        where = f"rules file {override}"
        for rid, entry in user.items():
            if rid not in cat:
                raise CatalogError(f"{where}: unknown rule id {rid!r}"[:300])
            validate_override(rid, entry, cat[rid], cat, where)
        for rid, entry in user.items():
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
