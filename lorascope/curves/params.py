"""Catalog access for the curve stage: its own entry (``curves``) and the rules' params."""
from __future__ import annotations

from typing import Any

STAGE_ID = "curves"


class Thresholds:
    """Read-only view of the catalog for the stage. Every number the stage uses comes
    from here; a missing key is a catalog error (KeyError naming the entry)."""

    def __init__(self, catalog: dict):
        self.catalog = catalog

    def stage(self, key: str) -> Any:
        return self.rule(STAGE_ID, key)

    def rule(self, rule_id: str, key: str) -> Any:
        try:
            return self.catalog[rule_id]["params"][key]
        except KeyError:
            raise KeyError(f"catalog entry {rule_id} has no param {key!r}") from None

    def get(self, rule_id: str, key: str, default: Any = None) -> Any:
        return self.catalog.get(rule_id, {}).get("params", {}).get(key, default)

    def enabled(self, rule_id: str) -> bool:
        entry = self.catalog.get(rule_id)
        return entry is not None and entry.get("severity") != "off"
