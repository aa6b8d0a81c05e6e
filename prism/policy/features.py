"""The first-packet SPE's features: one function, ``flow_features``, for training and the controller alike.

A flow's features come from its first packet (protocol, ports and the service
class they name, size, TCP flags) and from a bounded history of what recent
flows of the same service, source and destination did (``FlowHistory``).
The controller calls, at a new flow's first packet::

    first = FirstPacket.from_packet(info, now)
    x = flow_features(first, history, now, record_start=True)   # then predict

and, at the flow's flow-removed report, ``history.record_end(first, duration_s,
packets, now)``. Training replays flow records through exactly these calls
(``models.features.replay_features``), feeding each flow's outcome to the history only when a
controller would have learnt it: after the flow's last packet plus the switch's
idle timeout.

Pure (no pandas, no numpy): the controller's decision path imports it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from prism.flows.identity import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, PacketInfo, ip_to_bytes

NAN = float("nan")

# --- service classes ------------------------------------------------------------
SERVICE_NONE = 0  #: protocol without ports (ICMP, ...)
SERVICE_DNS = 1
SERVICE_WEB = 2  #: HTTP/HTTPS over TCP
SERVICE_QUIC = 3  #: HTTP/3 and other UDP on web ports
SERVICE_MAIL = 4
SERVICE_REMOTE = 5  #: SSH, telnet, RDP, VNC
SERVICE_TIME = 6
SERVICE_LOCAL = 7  #: DHCP, NetBIOS, mDNS, LLMNR, SSDP: local discovery
SERVICE_FILES = 8  #: FTP, SMB, databases
SERVICE_RTC = 9  #: SIP, STUN/TURN, RTP relays
SERVICE_MEDIA = 10  #: RTSP, RTMP
SERVICE_TUNNEL = 11  #: IPsec, OpenVPN, WireGuard, PPTP
SERVICE_P2P = 12  #: BitTorrent
SERVICE_MESSAGING = 13  #: MQTT, XMPP, push notifications
SERVICE_OTHER_WELL_KNOWN = 14  #: another port below 1024
SERVICE_REGISTERED = 15  #: another port 1024-49151
SERVICE_DYNAMIC = 16  #: both ports dynamic (49152 and above)
WELL_KNOWN_PORT_LIMIT = 1024
DYNAMIC_PORT_START = 49152

_SERVICE_PORTS: Dict[int, Tuple[int, ...]] = {
    SERVICE_DNS: (53, 853, 5353, 5355),
    SERVICE_WEB: (80, 443, 8000, 8008, 8080, 8443, 8888),
    SERVICE_MAIL: (25, 110, 143, 465, 587, 993, 995),
    SERVICE_REMOTE: (22, 23, 3389, 5900),
    SERVICE_TIME: (123,),
    SERVICE_LOCAL: (67, 68, 137, 138, 139, 1900, 5355),
    SERVICE_FILES: (20, 21, 445, 1433, 3306, 5432, 6379, 27017),
    SERVICE_RTC: (3478, 3479, 5060, 5061, 19302, 19305),
    SERVICE_MEDIA: (554, 1935, 8554),
    SERVICE_TUNNEL: (500, 1194, 1723, 4500, 51820),
    SERVICE_P2P: (6881, 6882, 6883, 6884, 6885, 6886, 6887, 6888, 6889, 51413),
    SERVICE_MESSAGING: (1883, 5222, 5223, 5228, 8883),
}
#: Well-known service ports -> service class (the table the features use).
SERVICE_OF_PORT: Dict[int, int] = {
    port: service for service, ports in _SERVICE_PORTS.items() for port in ports
}
_WEB_PORTS = frozenset(_SERVICE_PORTS[SERVICE_WEB])

# --- history parameters -----------------------------------------------------------
HISTORY_SCOPES = ("service", "src", "dst")  #: what a history entry is keyed by
DEFAULT_HISTORY_ENTRIES = 8192  #: per scope; least recently used keys are forgotten
DEFAULT_HALF_LIFE_S = 60.0  #: recent-flow counts halve over this time
DEFAULT_EWMA_ALPHA = 0.25  #: weight of the newest ended flow in the outcome averages

FIRST_PACKET_FEATURES = (
    "ip_version", "proto", "service_class", "service_port", "to_service",
    "first_ip_len", "tcp_flags", "tcp_syn_only",
)  # fmt: skip
HISTORY_STATS = ("recent_flows", "alive_share", "log_packets", "log_duration")
#: The model's input columns, in order (stored in the model manifest).
FEATURE_NAMES: Tuple[str, ...] = FIRST_PACKET_FEATURES + tuple(
    f"{scope}_{stat}" for scope in HISTORY_SCOPES for stat in HISTORY_STATS
)


@dataclass(frozen=True, slots=True)
class FirstPacket:
    """What the director sees of a new flow, as the features need it.

    Attributes:
        ts: arrival time of the flow's first packet (seconds).
        ip_version: 4 or 6.
        proto: IP protocol number.
        src: packed source address of the first packet (the history's key:
            the controller has it packed, so it pays no text conversion).
        dst: packed destination address.
        sport: source port (0 if none).
        dport: destination port (0 if none).
        ip_len: IP length of the first packet, None if unknown.
        tcp_flags: TCP flags of the first packet (0 if not TCP), None if unknown.
    """

    ts: float
    ip_version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    ip_len: Optional[int]
    tcp_flags: Optional[int]

    @classmethod
    def from_packet(cls, info: PacketInfo, now: float) -> "FirstPacket":
        """From the parsed first packet of a flow (the controller's path)."""
        return cls(
            now, info.ip_version, info.proto, info.src, info.dst,
            info.sport, info.dport, info.ip_len,
            info.tcp_flags if info.proto == PROTO_TCP else 0,
        )  # fmt: skip

    @classmethod
    def from_record(cls, row) -> "FirstPacket":
        """From a flow record (a ``prism.telemetry.records`` row as a namedtuple or mapping)."""
        get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
        return cls(
            float(get("ts_start")), int(get("ip_version")), int(get("proto")),
            _packed(str(get("src_addr"))), _packed(str(get("dst_addr"))),
            int(get("sport")), int(get("dport")),
            _optional_int(get("first_ip_len")), _optional_int(get("first_tcp_flags")),
        )  # fmt: skip


@lru_cache(maxsize=65536)
def _packed(address: str) -> bytes:
    return ip_to_bytes(address)


def _optional_int(value) -> Optional[int]:
    try:
        return None if value is None or value != value else int(value)
    except TypeError:  # pandas' NA, a missing value in a record (its truth is ambiguous)
        return None


def service_of(proto: int, sport: int, dport: int) -> Tuple[int, int]:
    """The flow's service port and service class from its first packet's ports.

    The service port is the destination port if it is a known service port,
    else the source port if that is one (a first packet seen from the
    server), else the lower of the two.

    Returns:
        ``(service_port, service_class)``.
    """
    if not sport and not dport:
        return 0, SERVICE_NONE
    if dport in SERVICE_OF_PORT:
        port = dport
    elif sport in SERVICE_OF_PORT:
        port = sport
    else:
        port = min(p for p in (sport, dport) if p) if sport and dport else (sport or dport)
    service = SERVICE_OF_PORT.get(port)
    if service == SERVICE_WEB and proto == PROTO_UDP:
        service = SERVICE_QUIC
    elif service is None:
        if port < WELL_KNOWN_PORT_LIMIT:
            service = SERVICE_OTHER_WELL_KNOWN
        elif port < DYNAMIC_PORT_START:
            service = SERVICE_REGISTERED
        else:
            service = SERVICE_DYNAMIC
    return port, service


class FlowHistory:
    """Bounded memory of what recent flows of each service, source and destination did.

    Per scope an LRU map (at most ``max_entries`` keys) from key to: a
    recent-flow count that decays with half-life ``half_life_s``, and
    exponentially weighted averages (weight ``alpha``) over ended flows of
    "alive after the horizon", log packets and log duration.

    Args:
        horizon_s: the takeover horizon H; an ended flow counts as alive if it
            lasted longer.
        max_entries: keys kept per scope.
        half_life_s: half-life of the recent-flow counts.
        alpha: EWMA weight of the newest outcome.
    """

    def __init__(
        self,
        horizon_s: float,
        max_entries: int = DEFAULT_HISTORY_ENTRIES,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        alpha: float = DEFAULT_EWMA_ALPHA,
    ):
        if max_entries < 1 or half_life_s <= 0 or not 0 < alpha <= 1 or horizon_s < 0:
            raise ValueError("FlowHistory needs max_entries >= 1, half_life_s > 0, 0 < alpha <= 1")
        self.horizon_s = horizon_s
        self.max_entries = max_entries
        self.half_life_s = half_life_s
        self.alpha = alpha
        # key -> [last start time, recent count, alive share, log packets, log duration]
        self._scopes: Tuple[OrderedDict, ...] = tuple(OrderedDict() for _ in HISTORY_SCOPES)

    def __len__(self) -> int:
        return sum(len(scope) for scope in self._scopes)

    @staticmethod
    def keys_of(first: FirstPacket) -> Tuple[tuple, bytes, bytes]:
        """The first packet's key in each scope (service, source, destination)."""
        port, _service = service_of(first.proto, first.sport, first.dport)
        return (first.proto, port), first.src, first.dst

    def stats(self, first: FirstPacket, now: float, record_start: bool = False) -> List[float]:
        """History features of a flow (``HISTORY_STATS`` per scope, scopes in order).

        Args:
            first: the flow's first packet.
            now: the current time.
            record_start: also count this flow as started now (after reading the
                stats), in the same pass over the keys: ``record_start(first, now)``.
        """
        out: List[float] = []
        port, _service = service_of(first.proto, first.sport, first.dport)
        keys = ((first.proto, port), first.src, first.dst)
        for scope, key in zip(self._scopes, keys):
            entry = scope.get(key)
            if entry is None:
                out += (0.0, NAN, NAN, NAN)
                if record_start:
                    self._entry(scope, key, now)[1] = 1.0
                continue
            recent = self._decayed(entry, now)
            out += (recent, entry[2], entry[3], entry[4])
            if record_start:
                scope.move_to_end(key)
                entry[0] = now
                entry[1] = recent + 1.0
        return out

    def record_start(self, first: FirstPacket, now: float) -> None:
        """A new flow started now (counts toward its keys' recent flows)."""
        self.stats(first, now, record_start=True)

    def record_end(self, first: FirstPacket, duration_s: float, packets: int, now: float) -> None:
        """A flow ended and its outcome is known (e.g. a flow-removed report)."""
        outcome = (
            1.0 if duration_s > self.horizon_s else 0.0,
            math.log1p(max(packets, 0)),
            math.log1p(max(duration_s, 0.0)),
        )
        alpha = self.alpha
        for scope, key in zip(self._scopes, self.keys_of(first)):
            entry = self._entry(scope, key, now)
            for slot, value in zip((2, 3, 4), outcome):
                old = entry[slot]
                entry[slot] = value if old != old else old + alpha * (value - old)

    def _entry(self, scope: OrderedDict, key, now: float) -> list:
        entry = scope.get(key)
        if entry is None:
            entry = scope[key] = [now, 0.0, NAN, NAN, NAN]
            if len(scope) > self.max_entries:
                scope.popitem(last=False)
        else:
            scope.move_to_end(key)
        return entry

    def _decayed(self, entry: list, now: float) -> float:
        elapsed = max(0.0, now - entry[0])
        return entry[1] * 0.5 ** (elapsed / self.half_life_s)


def flow_features(
    first: FirstPacket, history: FlowHistory, now: float, record_start: bool = False
) -> List[float]:
    """THE feature function: a flow's model input, in ``FEATURE_NAMES`` order.

    Args:
        first: the flow's first packet.
        history: what recent flows did.
        now: the current time (the first packet's arrival).
        record_start: then count the flow as started in ``history`` (what the
            controller and the training replay both do at a new flow).

    Returns:
        A list of floats; NaN marks an unknown value (the model handles it).
    """
    port, service = service_of(first.proto, first.sport, first.dport)
    flags = first.tcp_flags
    if flags is None:
        flag_value = syn_only = NAN
    else:
        flag_value = float(flags)
        syn_only = 1.0 if flags & (TCP_SYN | TCP_ACK) == TCP_SYN else 0.0
    features = [
        float(first.ip_version),
        float(first.proto),
        float(service),
        float(port),
        1.0 if port and port == first.dport else 0.0,
        NAN if first.ip_len is None else float(first.ip_len),
        flag_value,
        syn_only,
    ]
    features += history.stats(first, now, record_start)
    return features
