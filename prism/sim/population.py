"""Generated flow populations: real measured sizes and arrivals (AGH 2015), documented synthetic rest.

What is measured and what is synthetic, per column of the flow-record schema:

- ``packets``: measured. Drawn per protocol class from the AGH length
  histograms (inverse CDF over bins, ``prism.sim.distributions``); the class
  (TCP 52.5%, UDP 45.8%, other 1.7%) with the measured shares.
- ``bytes``: measured per-length mean, synthetic spread. ``packets`` times the
  measured mean packet size of the flow's length bin (``octets_sum /
  packets_sum``, Ethernet frames as the NetFlow exporter counted them) times a
  log-normal factor of mean 1, clipped to 64..1522 bytes per packet. The
  factor's sigma is ``max(PACKET_SIZE_SIGMA_MIN, PACKET_SIZE_SIGMA_ONE /
  sqrt(packets))``: one packet's size spreads widely (ACKs, queries, full
  frames), a long flow's mean packet size little. Byte totals per length bin
  match the measurement in expectation (less the clipping); the measured size
  histogram is matched within 5 points of share at every power-of-two size
  (tested), not exactly: the data has no joint length-size distribution.
- ``ts_start``: measured. The per-second flow counts of the hour, replayed
  from 19:00:00 at the real rate (``ARRIVALS_REAL``: the first N flows of the
  hour, about 1,800 per second) or spread over the whole hour with its shape
  (``ARRIVALS_HOUR``); uniform within a second.
- ``duration_s``: synthetic (the data has no durations). A flow of ``p > 1``
  packets sends at ``RATE_PPS * p ** RATE_EXPONENT`` packets per second times
  a log-normal factor (``RATE_SIGMA``), so that its duration is ``(p - 1) /
  rate``, capped by the exporter's timeouts: at most 300 s (active timeout)
  and at most 15 s per gap (inactive timeout). One-packet flows last 0 s.
- addresses, ports, first-packet size and TCP flags: synthetic, drawn
  independently of the flow's size (the data has no joint distribution):
  clients from ``CLIENTS`` dormitory hosts, servers by a Zipf law over
  ``SERVERS`` addresses, service ports from ``TCP_SERVICE_PORTS`` /
  ``UDP_SERVICE_PORTS`` (the rest: a random port), client ports ephemeral.
  TCP flows open with a SYN (60-byte first packet) with ``TCP_SYN_SHARE``,
  else start mid-connection (an ACK of the flow's mean packet size, as a
  NetFlow record split by a timeout does); UDP and others' first packet has
  the flow's mean packet size. The predictive policy therefore only has the
  protocol, the first packet's size and SYN flag to go on in generated flows:
  judge prediction on real flow records, and scale and cost here.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd

from prism.flows.identity import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, FlowKey
from prism.telemetry.records import END_UNKNOWN
from prism.sim.distributions import PROTOCOL_CLASSES, FlowDistributions

SOURCE_GENERATED = "generated"
GROUP_GENERATED = "agh2015-generated"
ARRIVALS_REAL = "real"
ARRIVALS_HOUR = "hour"
ARRIVAL_MODES = (ARRIVALS_REAL, ARRIVALS_HOUR)

# --- synthetic parts (see the module docstring) --------------------------------------
PACKET_SIZE_SIGMA_ONE = 1.0
PACKET_SIZE_SIGMA_MIN = 0.25
MIN_FRAME_BYTES = 64
MAX_FRAME_BYTES = 1522
RATE_PPS = 2.0  #: median packets/s of a (hypothetical) one-packet flow
RATE_EXPONENT = 0.5  #: bigger flows send faster: rate grows as sqrt(packets)
RATE_SIGMA = 1.0
ACTIVE_TIMEOUT_S = 300.0  #: the AGH exporter's active timeout
INACTIVE_TIMEOUT_S = 15.0  #: the AGH exporter's inactive timeout
MIN_GAP_S = 1e-4
CLIENTS = 8192  #: about 8,000 students in the dormitories
SERVERS = 131072
SERVER_ZIPF_EXPONENT = 1.1
CLIENT_NET = (10, 0)  #: clients 10.0.0.0/19
SERVER_NET = (198, 18)  #: servers 198.18.0.0/15 (a benchmarking range)
EPHEMERAL_PORTS = (32768, 61000)
TCP_SYN_SHARE = 0.8
TCP_SYN_IP_LEN = 60
#: (port, share); the rest of the flows go to a random port 1024..65535.
TCP_SERVICE_PORTS = ((443, 0.55), (80, 0.2), (8080, 0.02), (22, 0.01), (993, 0.01), (6881, 0.05))
UDP_SERVICE_PORTS = ((443, 0.2), (53, 0.25), (123, 0.02), (6881, 0.1), (3478, 0.03))
PROTO_OF_CLASS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "other": PROTO_ICMP}
FLOW_ID_CHUNK = 50_000

Progress = Optional[Callable[[int], None]]


class PopulationError(ValueError):
    """A population that cannot be generated as asked."""


def generate_population(
    n_flows: int,
    dists: FlowDistributions,
    seed: int,
    arrivals: str = ARRIVALS_REAL,
    progress: Progress = None,
) -> pd.DataFrame:
    """Draw ``n_flows`` flow records (``prism.telemetry.records`` columns), sorted by start time.

    Args:
        n_flows: flows to draw (>= 1).
        dists: the measured distributions.
        seed: the random seed: equal seeds give equal populations.
        arrivals: ``ARRIVALS_REAL`` or ``ARRIVALS_HOUR`` (module docstring).
        progress: called with a number of flows done, now and then.

    Returns:
        A frame with the record schema's columns; addresses and text columns are
        categorical (1,000,000 flows take about 60 MB).

    Raises:
        PopulationError: ``n_flows`` < 1 or an unknown arrival mode.
    """
    if n_flows < 1:
        raise PopulationError(f"a population needs at least one flow, not {n_flows}")
    if arrivals not in ARRIVAL_MODES:
        raise PopulationError(f"arrivals must be one of {ARRIVAL_MODES}, not {arrivals!r}")
    rng = np.random.default_rng(seed)
    ts_start = _arrivals(dists, n_flows, arrivals, rng)
    klass = rng.choice(len(PROTOCOL_CLASSES), size=n_flows, p=np.asarray(dists.protocol_shares))
    proto = np.empty(n_flows, dtype=np.int16)
    packets = np.empty(n_flows, dtype=np.int64)
    packet_size = np.empty(n_flows, dtype=np.float64)
    for index, name in enumerate(PROTOCOL_CLASSES):
        rows = np.flatnonzero(klass == index)
        histogram = dists.length[name]
        proto[rows] = PROTO_OF_CLASS[name]
        packets[rows], bins = histogram.sample(rng, len(rows))
        packet_size[rows] = histogram.mean_packet_size[bins]
    sigma = np.maximum(PACKET_SIZE_SIGMA_MIN, PACKET_SIZE_SIGMA_ONE / np.sqrt(packets))
    spread = np.exp(sigma * rng.standard_normal(n_flows) - sigma**2 / 2)
    packet_size = np.clip(packet_size * spread, MIN_FRAME_BYTES, MAX_FRAME_BYTES)
    nbytes = np.rint(packets * packet_size).astype(np.int64)
    duration = durations(packets, rng)
    sport, dport = _ports(proto, rng)
    ip_len, flags = _first_packet(proto, packet_size, rng)
    client = rng.integers(0, CLIENTS, n_flows)
    server = _zipf_ranks(rng, n_flows)
    clients_text, clients_packed = _address_pool(CLIENT_NET, CLIENTS)
    servers_text, servers_packed = _address_pool(SERVER_NET, SERVERS)
    flow_id = _flow_ids(proto, client, sport, server, dport, clients_packed, servers_packed, progress)
    frame = pd.DataFrame({
        "flow_id": flow_id,
        "ts_start": ts_start,
        "ip_version": np.full(n_flows, 4, dtype=np.int8),
        "proto": proto,
        "src_addr": pd.Categorical.from_codes(client, categories=clients_text),
        "dst_addr": pd.Categorical.from_codes(server, categories=servers_text),
        "sport": sport,
        "dport": dport,
        "first_ip_len": pd.array(ip_len, dtype="Int32"),
        "first_tcp_flags": pd.array(flags, dtype="Int16"),
        "source": pd.Categorical.from_codes(np.zeros(n_flows, dtype=np.int8), [SOURCE_GENERATED]),
        "duration_s": duration,
        "packets": packets,
        "bytes": nbytes,
        "truncated": np.zeros(n_flows, dtype=bool),
        "end_reason": pd.Categorical.from_codes(np.zeros(n_flows, dtype=np.int8), [END_UNKNOWN]),
        "group": pd.Categorical.from_codes(np.zeros(n_flows, dtype=np.int8), [GROUP_GENERATED]),
    })  # fmt: skip
    return frame


def durations(packets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic durations (s) of flows of ``packets`` packets (the rate model above)."""
    packets = np.asarray(packets, dtype=np.float64)
    gaps = packets - 1.0
    rate = RATE_PPS * packets**RATE_EXPONENT * np.exp(RATE_SIGMA * rng.standard_normal(len(packets)))
    duration = np.maximum(gaps / rate, gaps * MIN_GAP_S)
    return np.minimum(duration, np.minimum(ACTIVE_TIMEOUT_S, INACTIVE_TIMEOUT_S * gaps))


def _arrivals(dists: FlowDistributions, n_flows: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    counts = np.rint(dists.arrivals).astype(np.int64)
    if mode == ARRIVALS_HOUR:
        seconds = rng.choice(len(counts), size=n_flows, p=counts / counts.sum())
    else:  # the hour's first n flows, at the real rate (the hour repeats if n is larger)
        repeats = -(-n_flows // int(counts.sum()))
        tiled = np.tile(counts, repeats)
        last = int(np.searchsorted(np.cumsum(tiled), n_flows))
        seconds = np.repeat(np.arange(last + 1), tiled[: last + 1])[:n_flows]
    return np.sort(dists.first_second + seconds + rng.random(n_flows))


def _ports(proto: np.ndarray, rng: np.random.Generator):
    n = len(proto)
    sport = rng.integers(*EPHEMERAL_PORTS, size=n).astype(np.int32)
    dport = rng.integers(1024, 65536, size=n).astype(np.int32)
    for number, table in ((PROTO_TCP, TCP_SERVICE_PORTS), (PROTO_UDP, UDP_SERVICE_PORTS)):
        rows = np.flatnonzero(proto == number)
        ports = np.array([port for port, _share in table] + [-1])
        shares = np.array([share for _port, share in table])
        chosen = ports[rng.choice(len(ports), size=len(rows), p=np.r_[shares, 1.0 - shares.sum()])]
        dport[rows] = np.where(chosen >= 0, chosen, dport[rows])
    portless = ~np.isin(proto, (PROTO_TCP, PROTO_UDP))
    sport[portless] = 0
    dport[portless] = 0
    return sport, dport


def _first_packet(proto: np.ndarray, packet_size: np.ndarray, rng: np.random.Generator):
    ip_len = np.rint(packet_size).astype(np.int32)
    flags = np.zeros(len(proto), dtype=np.int16)
    tcp = np.flatnonzero(proto == PROTO_TCP)
    syn = rng.random(len(tcp)) < TCP_SYN_SHARE
    flags[tcp] = np.where(syn, TCP_SYN, TCP_ACK)
    ip_len[tcp[syn]] = TCP_SYN_IP_LEN
    return ip_len, flags


def _zipf_ranks(rng: np.random.Generator, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, SERVERS + 1) ** SERVER_ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(ranks, SERVERS - 1)


def _address_pool(prefix, size: int):
    host = np.arange(size)
    third, fourth = prefix[1] + host // 65536, host // 256 % 256
    texts = [f"{prefix[0]}.{t}.{f}.{h % 256}" for t, f, h in zip(third.tolist(), fourth.tolist(), host.tolist())]
    packed = [bytes((prefix[0], t, f, h % 256)) for t, f, h in zip(third.tolist(), fourth.tolist(), host.tolist())]
    return texts, packed


def _flow_ids(proto, client, sport, server, dport, clients_packed, servers_packed, progress: Progress):
    """``FlowKey.flow_id`` of every flow (what the controller would use as its cookie)."""
    out = np.empty(len(proto), dtype=np.uint64)
    between = FlowKey.between
    for start in range(0, len(proto), FLOW_ID_CHUNK):
        stop = start + FLOW_ID_CHUNK
        rows = zip(proto[start:stop].tolist(), client[start:stop].tolist(), sport[start:stop].tolist(),
                   server[start:stop].tolist(), dport[start:stop].tolist())  # fmt: skip
        out[start:stop] = [
            between(p, clients_packed[c], sp, servers_packed[s], dp)[0].flow_id for p, c, sp, s, dp in rows
        ]
        if progress is not None:
            progress(min(stop, len(proto)) - start)
    return out
