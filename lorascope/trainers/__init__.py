"""Trainer layouts: one module per trainer, read by ingest and by ``rerun``.

A trainer module knows everything lorascope needs about one trainer and nothing
else does:

* its configuration files: how to recognise them (``detect``), its keys and what they
  mean (a :class:`~lorascope.trainers._keys.Key` table plus ``read`` for keys that need
  logic, e.g. epochs vs steps), the values it implies when a key is left out
  (``implied``) and how it counts its optimizer steps (``planned``);
* its log lines (``LOG_SHAPE`` regexes in the module, used by ``ingest.textlog``);
* its checkpoint naming (regexes in the module, used by ``ingest.safetensors`` and
  ``rerun.plan``);
* how ``rerun --cmd`` patches its config for a replay: the key spellings (the same
  table), the path keys to make absolute, the output / window / resume settings
  (``replay``).

Adding a trainer is one module here (a :class:`Layout` in :data:`LAYOUTS`) plus its
fixture.  Nothing after ``build`` imports this package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorascope.trainers._keys import Key, Out, write_name


@dataclass(frozen=True)
class Plan:
    """How a trainer turns its settings into optimizer steps (see ``Layout.planned``)."""

    steps: int
    how: str                 # e.g. "10 epochs x ceil(24 images x 10 repeats / batch 4)"


@dataclass(frozen=True)
class Layout:
    name: str                                   # layout id: "kohya", "lora-scripts-yaml", ...
    trainer: str | None                         # the report's trainer name, None: not a trainer
    task: str | None                            # "sd" | "llm" | None (decided by the file)
    keys: tuple[Key, ...]
    detect: Callable[[dict, dict, str], bool]   # (document, flattened document, rel path)
    read: Callable[..., None]                   # (out, doc, flat, facts, path, rel)
    # values the trainer uses when its training config leaves a key out (not printed in
    # the report; rules read them through Config.effective)
    implied: tuple[tuple[str, Any], ...] = ()
    # (config values, dataset size) -> planned optimizer steps, or None
    planned: Callable[[dict, "DataCount"], Plan | None] | None = None
    path_keys: tuple[str, ...] = ()             # keys holding paths (made absolute by rerun)
    # rerun: (doc, plan, out_dir, edit) -> None; edit has set/pop/find for dotted keys
    replay: Callable[..., None] | None = None
    doc: str = ""


@dataclass(frozen=True)
class DataCount:
    """The dataset size a trainer's step count needs."""

    items: int | None = None        # unique training samples
    repeats: float | None = None    # per-sample repeats per epoch (kohya), None: 1
    views: int | None = None        # samples per epoch including repeats, when known directly
    split: bool = False             # items counted by the trainer itself after holding out
                                    # its validation share (HF's "Num examples")


__all__ = ["DataCount", "Edit", "Key", "Layout", "Plan", "by_name", "detect", "layouts", "read",
           "write_name"]


def _layouts() -> list[Layout]:
    from lorascope.trainers import (accelerate, ai_toolkit, axolotl, diffusers, hf_trainer, kohya,
                                    llamafactory, lora_scripts, onetrainer, peft, simpletuner)
    # detection order: the first layout whose detect() holds reads the file
    # (axolotl's YAML has a `datasets` list too: its stricter test comes before kohya's)
    return [ai_toolkit.LAYOUT, onetrainer.LAYOUT, simpletuner.LAYOUT, axolotl.LAYOUT,
            kohya.DATASET, peft.LAYOUT, accelerate.LAYOUT, lora_scripts.TOML, kohya.LAYOUT,
            lora_scripts.YAML, llamafactory.LAYOUT, hf_trainer.LAYOUT, diffusers.LAYOUT]


_CACHE: list[Layout] = []


def layouts() -> list[Layout]:
    if not _CACHE:
        _CACHE.extend(_layouts())
    return _CACHE


def by_name(name: str | None) -> Layout | None:
    return next((lay for lay in layouts() if lay.name == name), None)


def detect(doc: dict, flat: dict, rel: str) -> Layout | None:
    for lay in layouts():
        if lay.detect(doc, flat, rel):
            return lay
    return None


def read(layout: Layout, doc: dict, flat: dict, path: Path, rel: str) -> tuple[list, dict]:
    """ConfigValues and facts of one document read with its layout."""
    out = Out(rel)
    facts: dict[str, Any] = {"layout": layout.name}
    layout.read(out, doc, flat, facts, path, rel)
    if layout.trainer:
        facts["trainer"] = layout.trainer
    if layout.task and "task" not in facts:
        facts["task"] = layout.task
    return out.list(), facts


@dataclass
class Edit:
    """Dotted-key edits of a config document (sections of kohya / lora-scripts TOML)."""

    doc: dict
    touched: list[str] = field(default_factory=list)

    def find(self, name: str) -> str | None:
        """Dotted key of `name` at top level or in one section; a dotted path (list
        items by index: ``config.process.0.train.lr``) when the document holds it."""
        if name in self.doc:
            return name
        if "." in name and _walk(self.doc, name.split(".")) is not None:
            return name
        for k, v in self.doc.items():
            if isinstance(v, dict) and name in v:
                return f"{k}.{name}"
        return None

    def set(self, dotted: str, value: Any) -> None:
        parts = dotted.split(".")
        node: Any = self.doc
        for p in parts[:-1]:
            if isinstance(node, list):
                node = node[int(p)]
                continue
            nxt = node.get(p)
            if not isinstance(nxt, (dict, list)):
                nxt = node[p] = {}
            node = nxt
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
        self.touched.append(dotted)

    def put(self, name: str, value: Any) -> None:
        """Set `name` where the document has it, else at top level."""
        self.set(self.find(name) or name, value)

    def pop(self, name: str) -> None:
        k = self.find(name)
        if k is None:
            return
        parts = k.split(".")
        node = _walk(self.doc, parts[:-1])
        if isinstance(node, dict):
            node.pop(parts[-1], None)


def _walk(doc: Any, parts: list[str]) -> Any:
    """The node at a dotted path (dict keys, list indices), or None."""
    node = doc
    for p in parts:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return None
    return node
