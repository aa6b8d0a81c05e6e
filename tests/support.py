"""Helpers shared by the unit and integration tests: one ``poll``, one ``FakeDatapath``."""

from __future__ import annotations

import time
from typing import Callable, List, TypeVar

from ryu.ofproto import ofproto_protocol, ofproto_v1_3

T = TypeVar("T")

#: How long ``poll`` waits by default: generous, since a passing test never waits it out.
POLL_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.25


def poll(predicate: Callable[[], T], timeout: float = POLL_TIMEOUT_S, interval: float = POLL_INTERVAL_S) -> T:
    """Call ``predicate`` until it returns something truthy; returns that (or the last value).

    Tests wait for a state with this, never with a bare sleep.
    """
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


class FakeDatapath(ofproto_protocol.ProtocolDesc):
    """A Ryu OpenFlow 1.3 datapath that serializes what it is sent (as Ryu's does) and keeps it in ``sent``."""

    def __init__(self, dp_id: int = 1) -> None:
        super().__init__(ofproto_v1_3.OFP_VERSION)
        self.id = dp_id
        self.sent: List = []

    def send_msg(self, message) -> None:
        message.serialize()  # what Ryu's Datapath does before writing to the socket
        self.sent.append(message)
