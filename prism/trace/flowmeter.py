"""Group parsed packets into bidirectional flows and emit one FlowRecord per flow.

A flow is the packets of one ``FlowKey`` with no gap longer than the idle
timeout, as a switch's flow entry with that ``idle_timeout`` would see them.
A TCP connection that closed (FIN or RST seen) and is followed by a fresh SYN
on the same key (port reuse) starts a new flow.

Besides the totals, each record counts its state packets (TCP packets with
SYN, FIN or RST set; the first packet of any other flow) and, per age
milestone M (``prism.telemetry.records.MILESTONES_S``), the packets, bytes and state
packets that arrived at or before ``ts_start + M``. A packet older than the
flow's first (captures are not always in time order) counts from age 0.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Dict, List, Optional

from prism.flows.identity import PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, FlowKey, PacketInfo, ip_to_str
from prism.telemetry.records import (
    END_CAPTURE,
    END_FIN,
    END_IDLE,
    END_RST,
    MILESTONES_S,
    SOURCE_PCAP,
    FlowRecord,
)

#: TCP flags that make a packet a state packet.
STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST

#: Default idle timeout in seconds: a flow ends after this long without a
#: packet. NetFlow/IPFIX exporters commonly use 15 s as the inactive timeout;
#: 10 s is the FSC entries' idle timeout the controller uses by default.
DEFAULT_IDLE_TIMEOUT_S = 10.0


class _Flow:
    """Mutable per-flow counters while the flow is active."""

    __slots__ = (
        "first", "ts_start", "ts_last", "packets", "bytes", "syn", "fin", "rst", "state_packets",
        "span_packets", "span_bytes", "span_state",
    )  # fmt: skip

    def __init__(self, ts: float, first: PacketInfo):
        self.first = first
        self.ts_start = ts
        self.ts_last = ts
        self.packets = 0
        self.bytes = 0
        self.syn = False
        self.fin = False
        self.rst = False
        self.state_packets = 0
        # Counts per age span: span i holds ages in (M[i-1], M[i]] (span 0 from
        # age 0), the last span ages past the last milestone.
        spans = len(MILESTONES_S) + 1
        self.span_packets = [0] * spans
        self.span_bytes = [0] * spans
        self.span_state = [0] * spans

    def milestones(self):
        """Cumulative (packets, bytes, state packets) at each milestone."""
        at = len(MILESTONES_S)
        return tuple(zip(
            list(accumulate(self.span_packets))[:at],
            list(accumulate(self.span_bytes))[:at],
            list(accumulate(self.span_state))[:at],
        ))  # fmt: skip


class FlowMeter:
    """Turns a time-ordered packet sequence of one capture into flow records.

    Args:
        group: the capture's name, stored in every record's ``group``.
        idle_timeout_s: gap after which a key's next packet starts a new flow.
        source: the records' ``source`` value.
    """

    def __init__(
        self, group: str, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, source: str = SOURCE_PCAP
    ):
        if idle_timeout_s <= 0:
            raise ValueError(f"idle timeout must be positive, got {idle_timeout_s}")
        self.group = group
        self.idle_timeout_s = idle_timeout_s
        self.source = source
        self._active: Dict[FlowKey, _Flow] = {}
        self._done: List[FlowRecord] = []
        self._next_sweep: Optional[float] = None
        self.capture_start: Optional[float] = None
        self.capture_end: Optional[float] = None

    def add(self, ts: float, info: PacketInfo) -> None:
        """Account one packet captured at ``ts`` (seconds)."""
        if self.capture_start is None or ts < self.capture_start:
            self.capture_start = ts
        if self.capture_end is None or ts > self.capture_end:
            self.capture_end = ts
        if self._next_sweep is None:
            self._next_sweep = ts + self.idle_timeout_s
        elif ts >= self._next_sweep:
            self._sweep(ts)
            self._next_sweep = ts + self.idle_timeout_s
        flags = info.tcp_flags if info.proto == PROTO_TCP else 0
        flow = self._active.get(info.key)
        if flow is not None:
            idle = ts - flow.ts_last > self.idle_timeout_s
            reopened = (flow.fin or flow.rst) and flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            if idle or reopened:
                self._close(flow, END_IDLE if idle and not (flow.fin or flow.rst) else None)
                flow = None
        if flow is None:
            flow = self._active[info.key] = _Flow(ts, info)
        flow.ts_last = max(flow.ts_last, ts)
        is_state = bool(flags & STATE_FLAGS) if info.proto == PROTO_TCP else flow.packets == 0
        span = bisect_left(MILESTONES_S, ts - flow.ts_start)
        flow.span_packets[span] += 1
        flow.span_bytes[span] += info.ip_len
        if is_state:
            flow.state_packets += 1
            flow.span_state[span] += 1
        flow.packets += 1
        flow.bytes += info.ip_len
        flow.syn |= bool(flags & TCP_SYN)
        flow.fin |= bool(flags & TCP_FIN)
        flow.rst |= bool(flags & TCP_RST)

    def finish(self) -> List[FlowRecord]:
        """End the capture: close every active flow; returns all records by start time."""
        end = self.capture_end if self.capture_end is not None else 0.0
        for flow in list(self._active.values()):
            ended_by_idle = end - flow.ts_last >= self.idle_timeout_s
            self._close(flow, END_IDLE if ended_by_idle else END_CAPTURE)
        records, self._done = self._done, []
        records.sort(key=lambda record: record.ts_start)
        return records

    def _sweep(self, now: float) -> None:
        expired = [f for f in self._active.values() if now - f.ts_last > self.idle_timeout_s]
        for flow in expired:
            self._close(flow, END_IDLE)

    def _close(self, flow: _Flow, reason: Optional[str]) -> None:
        del self._active[flow.first.key]
        first = flow.first
        is_tcp = first.proto == PROTO_TCP
        if flow.rst:
            reason = END_RST
        elif flow.fin:
            reason = END_FIN
        elif reason is None:
            reason = END_IDLE
        truncated = reason == END_CAPTURE or (is_tcp and not (flow.syn and (flow.fin or flow.rst)))
        self._done.append(
            FlowRecord(
                flow_id=first.key.flow_id,
                ts_start=flow.ts_start,
                ip_version=first.ip_version,
                proto=first.proto,
                src_addr=ip_to_str(first.src),
                dst_addr=ip_to_str(first.dst),
                sport=first.sport,
                dport=first.dport,
                first_ip_len=first.ip_len,
                first_tcp_flags=first.tcp_flags if is_tcp else 0,
                source=self.source,
                duration_s=max(0.0, flow.ts_last - flow.ts_start),
                packets=flow.packets,
                bytes=flow.bytes,
                truncated=truncated,
                end_reason=reason,
                group=self.group,
                state_packets=flow.state_packets,
                milestones=flow.milestones(),
            )
        )
