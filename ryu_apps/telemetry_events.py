"""Custom Ryu events between PRISM's apps: a flow ended, with its joined telemetry record."""

from __future__ import annotations

from typing import Optional

from ryu.controller import event

from prism.telemetry.records import FlowRecord


class EventFlowEnded(event.EventBase):
    """The director saw a flow's last FSC entry removed.

    Raised by ``MirroringDirectorApp`` (which lists it in ``_EVENTS``) before its
    entry leaves the director's Flow State Cache, so the join of first-packet
    features with the switch's final counters is already done.

    Attributes:
        dp_id: The switch.
        flow_id: The flow (the FSC entries' cookie).
        record: The flow-record row (``prism.telemetry.rows.flow_record``); None when the
            switch's counters were unsupported or no first packet was kept.
        at: When the director handled the last flow-removed report (seconds since the epoch).
    """

    def __init__(self, dp_id: int, flow_id: int, record: Optional[FlowRecord], at: float) -> None:
        super().__init__()
        self.dp_id = dp_id
        self.flow_id = flow_id
        self.record = record
        self.at = at
