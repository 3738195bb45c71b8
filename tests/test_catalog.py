"""The rule catalog documents itself: every contract id has a rule, a doc and a fresh page."""
import re
from pathlib import Path

import pytest

from lorascope.rules.catalog_doc import catalog_document, index_page, rule_page, stage_page
from lorascope.rules.registry import (DOC_SECTIONS, REGISTRY, SEVERITIES, load_catalog, load_rule_modules,
                                      rule_entries)

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT.parent / "shared" / "spec" / "CONTRACT.md"

# CONTRACT §3, copied so that the suite runs where ../shared is absent.
CONTRACT_IDS = {
    "loss.nonfinite": "critical", "loss.spike": "critical", "loss.divergence": "critical",
    "loss.plateau": "critical", "loss.oscillation": "warning", "loss.epoch_jump": "warning",
    "overfit": "warning", "eval.missing": "warning", "grad.explosion": "critical",
    "grad.nonfinite": "info",
    "run.mixed": "warning", "run.incomplete": "warning", "log.base_model_not_loaded": "critical",
    "log.no_trainable_params": "critical", "log.oom": "critical", "ckpt.zero_adapter": "critical",
    "ckpt.truncated": "critical",
    "ckpt.nonfinite": "critical", "ckpt.norm_growth": "warning", "ckpt.config_mismatch": "warning",
    "data.encoding": "warning", "data.missing_file": "critical", "data.case_mismatch": "critical",
    "data.corrupt_image": "critical", "data.degenerate_image": "warning",
    "data.mixed_resolution": "warning", "data.caption_quality": "warning",
    "data.text_control_chars": "warning", "data.text_too_long": "warning",
    "config.lr_high": "warning", "config.lr_low": "warning", "config.small_batch": "warning",
    "config.rank_capacity": "warning", "config.epochs_high": "warning", "config.no_warmup": "info",
    "config.no_grad_clip": "info", "config.low_resolution": "warning", "config.missing_path": "critical",
}


def test_contract_copy_matches_the_spec():
    if not CONTRACT.is_file():
        pytest.skip("../shared/spec is not present")
    rows = re.findall(r"^\| `([a-z_.]+)` \| (critical|warning|info) \|", CONTRACT.read_text(), re.M)
    assert dict(rows) == CONTRACT_IDS


def test_every_contract_id_is_registered_with_its_default_severity():
    load_rule_modules()
    cat = load_catalog()
    for rid, sev in CONTRACT_IDS.items():
        assert rid in REGISTRY, f"{rid} has no rule function"
        assert cat.get(rid, {}).get("severity") == sev, f"{rid} default severity"


def test_catalog_and_registry_agree():
    load_rule_modules()
    cat = rule_entries(load_catalog())
    assert set(cat) == set(REGISTRY)
    for rid, entry in cat.items():
        assert entry["severity"] in SEVERITIES
        assert entry.get("summary"), f"{rid} has no summary"
        for cause in entry.get("causes", {}):
            assert cause in cat, f"{rid} names unknown cause {cause}"


def test_stages_document_their_thresholds():
    doc = catalog_document()
    assert [s["id"] for s in doc["stages"]] == ["curves"]
    for st in doc["stages"]:
        assert st["params"] and st["rationale"]
        for k in st["params"]:
            assert k in st["rationale"], f"{st['id']}: {k} is not explained"


def test_every_rule_documents_the_four_sections():
    load_rule_modules()
    doc = catalog_document()
    for r in doc["rules"]:
        for s in DOC_SECTIONS:
            assert len(r["doc"][s]) > 20, f"{r['id']}: section '{s}' missing or empty"
        if r["params"]:
            assert r["rationale"], f"{r['id']} has thresholds but no rationale"


def test_generated_docs_are_current():
    doc = catalog_document()
    stale = []
    for r in doc["rules"]:
        p = ROOT / "docs" / "rules" / f"{r['id']}.md"
        if not p.is_file() or p.read_text(encoding="utf-8") != rule_page(r):
            stale.append(p.name)
    for st in doc["stages"]:
        p = ROOT / "docs" / "rules" / f"{st['id']}.md"
        if not p.is_file() or p.read_text(encoding="utf-8") != stage_page(st):
            stale.append(p.name)
    idx = ROOT / "docs" / "rules.md"
    if not idx.is_file() or idx.read_text(encoding="utf-8") != index_page(doc):
        stale.append("rules.md")
    assert not stale, f"regenerate with `python -m lorascope.rules.catalog_doc`: {stale}"
