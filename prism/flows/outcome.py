"""What a flow turned out to be, from its FSC entries' flow-removed reports; unsupported counters as NA.

Pure and light (no pyarrow, no pandas): the predictive policy learns from every
ended flow with it, and ``prism.telemetry.rows`` writes it into the flow records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ALL_ONES_64 = 2**64 - 1  #: what OpenFlow reports for a 64-bit counter the switch does not keep
ALL_ONES_32 = 2**32 - 1


def counter(value: Optional[int], bits: int = 64) -> Optional[int]:
    """A switch counter, or None (NA) when the switch does not support it (all ones).

    Sums that reach all ones (an unsupported counter added to another) are NA too.
    """
    if value is None or value < 0 or value >= (1 << bits) - 1:
        return None
    return int(value)


@dataclass(frozen=True)
class FlowOutcome:
    """What a flow turned out to be, from its FSC entries' flow-removed reports.

    Attributes:
        duration_s: First to last packet (entry lifetime minus the idle timeout), >= 0.
        packets: Packets both ways, the first packet included; None if the switch does not count.
        bytes: Frame bytes both ways, the first packet included; None if the switch does not count.
    """

    duration_s: float
    packets: Optional[int]
    bytes: Optional[int]


def flow_outcome(entry, idle_timeout: float) -> FlowOutcome:
    """The outcome of an ended flow.

    Args:
        entry: The flow's ``prism.placement.profiles.FlowEntry`` after its last flow-removed report.
        idle_timeout: The FSC entries' idle timeout (what the lifetimes include).

    Returns:
        The outcome; counters the switch did not support are None.
    """
    first = entry.first_packet
    packets = counter(entry.packets)
    byte_count = counter(entry.bytes)
    return FlowOutcome(
        max(0.0, float(entry.duration_s) - idle_timeout),
        None if packets is None else packets + 1,
        None if byte_count is None else byte_count + (first.frame_len if first is not None else 0),
    )
