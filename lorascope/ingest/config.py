"""Training configuration files: YAML, TOML and JSON, and kohya ``ss_*`` metadata.

One file in, normalized :class:`ConfigValue` records out (keys from
``model.CONTRACT_CONFIG_KEYS`` / ``model.EXTRA_CONFIG_KEYS``), each remembering the
file and the dotted key the trainer wrote.  This module reads documents safely; which
trainer wrote one and what its keys mean lives in :mod:`lorascope.trainers` (one module
per trainer, the same tables ``rerun`` writes back with):

* kohya sd-scripts training TOML and dataset TOML, ``ss_*`` safetensors metadata;
* lora-scripts: the seed articles' YAML (``base_model``, ``task_type``, ``lora_rank``,
  ``batch_size``, ``epochs``, ...) and Akegarasu's sectioned TOML;
* LLaMA-Factory YAML, HF ``TrainingArguments`` dumps (``training_args.json``), PEFT
  ``adapter_config.json``, diffusers example-script dumps, accelerate's config.

Anything else parses to nothing, without a problem.  YAML is read with a
``yaml.SafeLoader`` subclass that refuses documents with many aliases (alias bombs);
python tags fail as a problem.  Nothing here raises on bad content.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml

from lorascope import trainers
from lorascope.ingest import _json
from lorascope.model import ConfigValue, Parsed, Source
from lorascope.safe_open import open_file
from lorascope.trainers import kohya
from lorascope.trainers._keys import parse_resolution

__all__ = ["parse", "parse_meta_json", "parse_safetensors_metadata", "parse_resolution"]

MAX_BYTES = 4 * 1024 * 1024        # a training config is a few KB; refuse anything huge
MAX_ALIASES = 200                  # YAML alias references allowed in one document
MAX_DEPTH = 12                     # nesting levels walked when flattening
MAX_KEYS = 20_000                  # flattened keys kept from one document

# Adaptive optimizers whose "learning rate" is a multiplier (1.0 is normal).
ADAPTIVE_OPTIMIZERS = ("prodigy", "dadapt")


class _Refused(Exception):
    """A document this parser will not read (reason in the message)."""


# -- reading ----------------------------------------------------------------------

class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias references and refuses documents with too many.

    ``safe_load`` itself shares aliased objects instead of copying them, but anything
    that walks the result (flattening, printing, JSON) expands them exponentially.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"YAML has more than {MAX_ALIASES} aliases (alias bomb?)")
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    loader = _GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _decode(data: bytes, problems: list[str]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for enc in ("gb18030", "cp1252"):
        try:
            text = data.decode(enc)
            problems.append(f"not UTF-8 (read as {enc})")
            return text
        except UnicodeDecodeError:
            continue
    problems.append("not UTF-8 (undecodable bytes replaced)")
    return data.decode("utf-8", errors="replace")


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] + ("..." if len(msg) > 200 else "")


def _read_document(path: Path, rel: str, problems: list[str]) -> Any:
    """The parsed document, or None (with a problem) when it cannot be read."""
    try:
        with open_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_BYTES:
                problems.append(f"{size} bytes: too large for a config file, not read")
                return None
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            problems.append("grew too large for a config file while read, not read")
            return None
    except OSError as e:
        problems.append(f"cannot read ({e.strerror or e})")
        return None
    if not data.strip():
        return None
    text = _decode(data, problems)
    ext = os.path.splitext(rel.lower())[1]
    try:
        if ext == ".toml":
            return _json.check_depth(tomllib.loads(text))
        if ext in (".yaml", ".yml"):
            return _json.check_depth_shared(_load_yaml(text))
        if ext == ".json":
            # Python's json accepts bare NaN / Infinity, as HF writes them.
            return _json.loads(text)
        # unknown extension classified as config: try JSON, then YAML
        try:
            return _json.loads(text)
        except _json.NestedTooDeep:
            raise
        except ValueError:
            return _json.check_depth_shared(_load_yaml(text))
    except _Refused as e:
        problems.append(str(e))
    except _json.NestedTooDeep as e:
        problems.append(f"{e}, not read")
    except tomllib.TOMLDecodeError as e:
        problems.append(f"invalid TOML: {_short(e)}")
    except yaml.constructor.ConstructorError as e:
        problems.append(f"YAML tag not allowed (safe_load only): {_short(e.problem or e)}")
    except yaml.YAMLError as e:
        problems.append(f"invalid YAML: {_short(e)}")
    except json.JSONDecodeError as e:
        problems.append(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:
        problems.append("nested too deeply, not read")
    except (ValueError, TypeError, MemoryError) as e:
        problems.append(f"unreadable: {_short(e)}")
    return None


def _flatten(doc: dict) -> dict[str, Any]:
    """{"a.b": leaf}; lists are kept as leaves. Bounded in depth and size."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack and len(out) < MAX_KEYS:
        prefix, node, depth = stack.pop()
        if isinstance(node, dict) and depth < MAX_DEPTH:
            for k, v in reversed(list(node.items())):
                key = f"{prefix}.{k}" if prefix else str(k)
                stack.append((key, v, depth + 1))
        elif prefix:
            out[prefix] = node
    return out


# -- layouts --------------------------------------------------------------------------
# Which trainer wrote a document, and what its keys mean, is in lorascope.trainers (one
# module per trainer, shared with `rerun`).  The converters are re-exported here.


# -- public ---------------------------------------------------------------------------

def parse(path: Path, rel: str) -> Parsed:
    """Read one config file (kind "config") into normalized ConfigValues.

    ``facts`` may get ``layout`` (the :mod:`lorascope.trainers` layout recognised),
    ``trainer`` ("kohya" | "lora-scripts" | "llamafactory" | "hf-trainer" |
    "diffusers"), ``task`` ("sd" | "llm"), and what a layout adds (kohya datasets:
    ``num_repeats``, ``image_dirs``, ``train_views``; LLaMA-Factory: ``dataset_names``,
    ``max_samples``; kohya ``output_name``).
    """
    src = Source(path=rel, kind="config")
    parsed = Parsed(source=src)
    try:
        doc = _read_document(Path(path), rel, src.problems)
        if not isinstance(doc, dict):
            return parsed
        flat = _flatten(doc)
        layout = trainers.detect(doc, flat, rel)
        if layout is None:
            return parsed
        values, facts = trainers.read(layout, doc, flat, Path(path), rel)
        parsed.facts.update(facts)
        parsed.config = values
        src.records = len(parsed.config)
    except Exception as e:  # noqa: BLE001 - a parser never raises on content
        src.problems.append(f"config not understood: {type(e).__name__}: {_short(e)}")
    return parsed


def parse_meta_json(path: Path, rel: str) -> Parsed:
    """kohya fine-tuning metadata (``meta_lat.json`` / ``meta_clean.json``): one entry
    per training image; only their number is read."""
    src = Source(path=rel, kind="config")
    parsed = Parsed(source=src)
    n = kohya.count_meta_json(Path(path))
    if n is None:
        src.problems.append("not a kohya metadata JSON object (image -> caption/tags)")
        return parsed
    parsed.config = [ConfigValue("num_train_items", n, rel, f"{rel.rsplit('/', 1)[-1]} entries")]
    parsed.facts.update(trainer="kohya", task="sd", layout="kohya-meta")
    src.records = n
    return parsed


def parse_safetensors_metadata(meta: dict[str, str], rel: str,
                               facts: dict | None = None) -> list[ConfigValue]:
    """Normalized config from kohya sd-scripts ``ss_*`` safetensors metadata
    (:func:`lorascope.trainers.kohya.read_metadata`).  Never raises."""
    try:
        return kohya.read_metadata(meta, rel, facts)
    except Exception:  # noqa: BLE001
        return []
