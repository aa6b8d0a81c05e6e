"""The configuration's ``bfd`` section: data-plane liveness of the cells (BFD with the switch), with file:line checks.

Schema::

    bfd:                  # optional; without it a dead cell process is found by missed heartbeats only
      interval: 10        # ms, integer 1-10000: the cell sends a control packet this often
      mult: 4             # integer 1-255: the switch declares the cell down after this many intervals
                          #   of silence (and the cell the switch after mult switch_intervals)
      switch_interval: 100  # ms, integer 1-10000: the switch sends this often (default 100)

The two directions have their own interval: the switch must find a dead cell
fast (``mult * interval``, 40 ms by default), while the cell only needs to
know that the switch is there, and a switch whose own BFD thread is late now
and then (Open vSwitch on a busy machine logs "long delay ... sending BFD
control message") must not make healthy cells take their sessions down.

With this section every cell port gets ``bfd:enable=true bfd:min_rx=interval
bfd:min_tx=switch_interval bfd:mult=mult`` (the topology and harness code set
them, ``bfd_interface_options``), every ``prism cell`` runs with ``--bfd
--bfd-min-tx interval --bfd-min-rx switch_interval --bfd-mult mult``
(``cell_bfd_arguments``), and the controller reads a cell port's OpenFlow
LIVE flag as the cell's data-plane health.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from yaml.nodes import Node

from prism.config.types import SEVERITY_WARNING

BFD_KEYS = ("interval", "mult", "switch_interval")
DEFAULT_INTERVAL_MS = 10
DEFAULT_SWITCH_INTERVAL_MS = 100
DEFAULT_MULT = 4
MAX_INTERVAL_MS = 10_000
MAX_MULT = 255
#: Below this detection time (ms) a busy machine's scheduling alone can fail a healthy cell.
FRAGILE_DETECTION_MS = 20


@dataclass(frozen=True)
class BfdConfig:
    """BFD between the switch and every cell (``bfd:`` section); intervals in milliseconds.

    Attributes:
        interval: The cell's transmit interval (the switch's required receive interval).
        mult: Detection multiplier, both ways.
        switch_interval: The switch's transmit interval (the cell's required receive interval).
    """

    interval: int = DEFAULT_INTERVAL_MS
    mult: int = DEFAULT_MULT
    switch_interval: int = DEFAULT_SWITCH_INTERVAL_MS

    @property
    def detection_ms(self) -> int:
        """How long the switch takes at most to declare a silent cell down."""
        return self.mult * self.interval


def check_bfd(checker, node: Optional[Node]) -> Optional[BfdConfig]:
    """The ``bfd`` section, or None when absent (problems reported through ``checker``)."""
    if node is None:
        return None
    fields = checker.mapping(node, "bfd", BFD_KEYS, ())
    if fields is None:
        return None
    values: Dict[str, Optional[int]] = {}
    for key, maximum in (("interval", MAX_INTERVAL_MS), ("mult", MAX_MULT), ("switch_interval", MAX_INTERVAL_MS)):
        if key in fields:
            values[key] = checker.integer(fields[key], f"bfd.{key}", 1, maximum)
    config = BfdConfig(
        values.get("interval") or DEFAULT_INTERVAL_MS,
        values.get("mult") or DEFAULT_MULT,
        values.get("switch_interval") or DEFAULT_SWITCH_INTERVAL_MS,
    )
    if config.detection_ms < FRAGILE_DETECTION_MS:
        checker.report(node, "bfd", f"the switch would declare a cell down after {config.detection_ms} ms of "
                       f"silence: a healthy cell descheduled that long is failed (use mult * interval >= "
                       f"{FRAGILE_DETECTION_MS} ms)", SEVERITY_WARNING)  # fmt: skip
    return config


def render_bfd(config: BfdConfig) -> dict:
    """The section as :func:`check_bfd` reads it back."""
    return {"interval": config.interval, "mult": config.mult, "switch_interval": config.switch_interval}


def bfd_interface_options(config: BfdConfig) -> List[str]:
    """``ovs-vsctl set Interface PORT ...`` arguments that make the switch speak BFD with the cell."""
    return ["bfd:enable=true", f"bfd:min_rx={config.interval}", f"bfd:min_tx={config.switch_interval}",
            f"bfd:mult={config.mult}"]  # fmt: skip


def cell_bfd_arguments(config: BfdConfig) -> List[str]:
    """``prism cell`` arguments for the same session."""
    return ["--bfd", "--bfd-min-tx", str(config.interval), "--bfd-min-rx", str(config.switch_interval),
            "--bfd-mult", str(config.mult)]  # fmt: skip
