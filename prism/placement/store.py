"""The placements file: every switch's remembered and live flow placements, saved so a restarted controller has them.

A restarted controller finds a switch whose entries it wipes (every live
flow comes back as new) and cells that still hold the flows' state. With
the placements it saved, it places each returning flow where its state is
(``prism.placement.memory``). The file is JSON, written atomically
(``prism.atomic``)::

    {"schema": 1, "saved_at": 1700000000.0,
     "switches": {"1": [[flow_id, ["cell2", "cell3"], at], ...]}}

Flows that started after the last save are not in it: saving every few
seconds bounds that window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from prism.atomic import atomic_write

SCHEMA = 1
FILE_MODE = 0o600


def save_placements(path: str, switches: Dict[int, List[list]], now: float) -> None:
    """Write every switch's placements (``PlacementMemory.entries`` format) to ``path`` atomically."""
    document = {"schema": SCHEMA, "saved_at": now,
                "switches": {str(dp_id): entries for dp_id, entries in switches.items()}}  # fmt: skip
    text = json.dumps(document, separators=(",", ":")).encode()
    atomic_write(path, lambda handle: handle.write(text), FILE_MODE)


def load_placements(path: str) -> Dict[int, List[list]]:
    """The placements saved in ``path`` by switch; empty if there is no usable file (never raises)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return {}
    switches = document.get("switches")
    if not isinstance(switches, dict):
        return {}
    loaded = {}
    for dp_id, entries in switches.items():
        if isinstance(entries, list) and str(dp_id).isdigit():
            loaded[int(dp_id)] = entries
    return loaded
