"""``lorascope watch``: the diagnosis of a run while it is still training (see
:mod:`lorascope.watch.session`)."""
from __future__ import annotations

from lorascope.watch.session import Options, Watch, watch

__all__ = ["Options", "Watch", "watch"]
