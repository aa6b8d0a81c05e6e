"""The configuration's ``bfd`` section: data-plane liveness of the cells (BFD with the switch), with file:line checks.

Schema::

    bfd:                  # optional; without it the switch sees a dead cell process only as heartbeats stop
      min_tx: 10          # ms, integer 1-10000: how often each side sends a control packet
      min_rx: 10          # ms, integer 1-10000: the fastest each side accepts packets
      mult: 3             # integer 1-255: packets missed before the switch declares the cell down

With this section every cell port gets ``bfd:enable=true`` with these
values (the topology and harness code set them, ``bfd_interface_options``),
every ``prism cell`` runs with ``--bfd`` and the same values, and the
controller reads a cell port's OpenFlow LIVE flag as the cell's data-plane
health. The switch declares a silent cell down after about
``mult * max(min_rx, min_tx)`` ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from yaml.nodes import Node

from prism.config_types import SEVERITY_WARNING

BFD_KEYS = ("min_tx", "min_rx", "mult")
DEFAULT_MIN_TX_MS = 10
DEFAULT_MIN_RX_MS = 10
DEFAULT_MULT = 3
MAX_INTERVAL_MS = 10_000
MAX_MULT = 255
#: Below this detection time (ms) a busy machine's scheduling alone can fail a healthy cell.
FRAGILE_DETECTION_MS = 20


@dataclass(frozen=True)
class BfdConfig:
    """BFD between the switch and every cell (``bfd:`` section); intervals in milliseconds."""

    min_tx: int = DEFAULT_MIN_TX_MS
    min_rx: int = DEFAULT_MIN_RX_MS
    mult: int = DEFAULT_MULT

    @property
    def detection_ms(self) -> int:
        """About how long the switch takes to declare a silent cell down."""
        return self.mult * max(self.min_rx, self.min_tx)


def check_bfd(checker, node: Optional[Node]) -> Optional[BfdConfig]:
    """The ``bfd`` section, or None when absent (problems reported through ``checker``)."""
    if node is None:
        return None
    fields = checker.mapping(node, "bfd", BFD_KEYS, ())
    if fields is None:
        return None
    values: Dict[str, Optional[int]] = {}
    for key, maximum in (("min_tx", MAX_INTERVAL_MS), ("min_rx", MAX_INTERVAL_MS), ("mult", MAX_MULT)):
        if key in fields:
            values[key] = checker.integer(fields[key], f"bfd.{key}", 1, maximum)
    config = BfdConfig(
        values.get("min_tx") or DEFAULT_MIN_TX_MS,
        values.get("min_rx") or DEFAULT_MIN_RX_MS,
        values.get("mult") or DEFAULT_MULT,
    )
    if config.detection_ms < FRAGILE_DETECTION_MS:
        checker.report(node, "bfd", f"the switch would declare a cell down after {config.detection_ms} ms of "
                       f"silence: a healthy cell descheduled that long is failed (use mult * interval >= "
                       f"{FRAGILE_DETECTION_MS} ms)", SEVERITY_WARNING)  # fmt: skip
    return config


def render_bfd(config: BfdConfig) -> dict:
    """The section as :func:`check_bfd` reads it back."""
    return {"min_tx": config.min_tx, "min_rx": config.min_rx, "mult": config.mult}


def bfd_interface_options(config: BfdConfig) -> List[str]:
    """``ovs-vsctl set Interface PORT ...`` arguments that make the switch speak BFD with the cell."""
    return ["bfd:enable=true", f"bfd:min_tx={config.min_tx}", f"bfd:min_rx={config.min_rx}",
            f"bfd:mult={config.mult}"]  # fmt: skip


def cell_bfd_arguments(config: BfdConfig) -> List[str]:
    """``prism cell`` arguments for the same session."""
    return ["--bfd", "--bfd-min-tx", str(config.min_tx), "--bfd-min-rx", str(config.min_rx),
            "--bfd-mult", str(config.mult)]  # fmt: skip
