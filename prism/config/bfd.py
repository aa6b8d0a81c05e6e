"""The configuration's ``bfd`` section: data-plane liveness of the cells (BFD with the switch).

Without it a dead cell process is found by missed heartbeats only. The two
directions have their own interval: the switch must find a dead cell fast
(``mult * interval``, 40 ms by default), while the cell only needs to know
that the switch is there, and a switch whose own BFD thread is late now and
then (Open vSwitch on a busy machine logs "long delay ... sending BFD control
message") must not make healthy cells take their sessions down.

With this section every cell port gets ``bfd:enable=true bfd:min_rx=interval
bfd:min_tx=switch_interval bfd:mult=mult`` (the topology and harness code set
them, ``bfd_interface_options``), every ``prism cell`` runs with ``--bfd
--bfd-min-tx interval --bfd-min-rx switch_interval --bfd-mult mult``
(``cell_bfd_arguments``), and the controller reads a cell port's OpenFlow
LIVE flag as the cell's data-plane health.
"""

from dataclasses import dataclass
from typing import Annotated, List

from prism.config.document import Document
from prism.config.fields import FORBID, integer
from prism.config.types import SEVERITY_WARNING

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

    __pydantic_config__ = FORBID

    interval: Annotated[int, integer(1, MAX_INTERVAL_MS)] = DEFAULT_INTERVAL_MS
    mult: Annotated[int, integer(1, MAX_MULT)] = DEFAULT_MULT
    switch_interval: Annotated[int, integer(1, MAX_INTERVAL_MS)] = DEFAULT_SWITCH_INTERVAL_MS

    @property
    def detection_ms(self) -> int:
        """How long the switch takes at most to declare a silent cell down."""
        return self.mult * self.interval


def check_bfd(doc: Document) -> None:
    """A detection time that a busy machine's scheduling alone can reach is a warning."""
    interval = doc.value(("bfd", "interval"), DEFAULT_INTERVAL_MS)
    mult = doc.value(("bfd", "mult"), DEFAULT_MULT)
    if doc.has(("bfd",)) and interval and mult and mult * interval < FRAGILE_DETECTION_MS:
        doc.report(("bfd",), f"the switch would declare a cell down after {mult * interval} ms of silence: a "
                   f"healthy cell descheduled that long is failed (use mult * interval >= {FRAGILE_DETECTION_MS} "
                   "ms)", SEVERITY_WARNING)  # fmt: skip


def bfd_interface_options(config: BfdConfig) -> List[str]:
    """``ovs-vsctl set Interface PORT ...`` arguments that make the switch speak BFD with the cell."""
    return ["bfd:enable=true", f"bfd:min_rx={config.interval}", f"bfd:min_tx={config.switch_interval}",
            f"bfd:mult={config.mult}"]  # fmt: skip


def cell_bfd_arguments(config: BfdConfig) -> List[str]:
    """``prism cell`` arguments for the same session."""
    return ["--bfd", "--bfd-min-tx", str(config.interval), "--bfd-min-rx", str(config.switch_interval),
            "--bfd-mult", str(config.mult)]  # fmt: skip
