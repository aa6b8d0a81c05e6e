"""Generated populations follow the measured AGH 2015 distributions; bad distribution files are refused clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prism.flows.identity import PROTO_TCP, PROTO_UDP, FlowKey, ip_to_bytes
from prism.telemetry.records import conform
from prism.sim.distributions import DistributionError, load_distributions, read_histogram
from prism.sim.population import (
    ACTIVE_TIMEOUT_S,
    ARRIVALS_HOUR,
    PopulationError,
    durations,
    generate_population,
)

POWERS_OF_TWO = [2**k for k in range(1, 12)]


@pytest.fixture(scope="module")
def dists():
    return load_distributions()


@pytest.fixture(scope="module")
def population(dists):
    return generate_population(100_000, dists, seed=7)


def test_histogram_sampling_matches_the_histogram(dists):
    """Inverse-CDF sampling: the share of flows below every power of two is the measured one."""
    for name in ("tcp", "udp", "other"):
        histogram = dists.length[name]
        values, _bins = histogram.sample(np.random.default_rng(1), 200_000)
        for edge in POWERS_OF_TWO:
            assert (values < edge).mean() == pytest.approx(histogram.share_below(edge), abs=0.006), (name, edge)


def test_population_lengths_protocols_and_sizes_follow_the_measurement(dists, population):
    packets = population["packets"].to_numpy()
    everything = dists.length["other"]  # the all-traffic histogram
    for edge in POWERS_OF_TWO:
        assert (packets < edge).mean() == pytest.approx(everything.share_below(edge), abs=0.01), edge
    tcp_share, udp_share, _other = dists.protocol_shares
    assert (population["proto"] == PROTO_TCP).mean() == pytest.approx(tcp_share, abs=0.01)
    assert (population["proto"] == PROTO_UDP).mean() == pytest.approx(udp_share, abs=0.01)
    nbytes = population["bytes"].to_numpy()
    for edge in [2**k for k in range(7, 21)]:
        assert (nbytes < edge).mean() == pytest.approx(dists.size.share_below(edge), abs=0.05), edge
    per_packet = nbytes / packets
    assert per_packet.min() >= 64 - 0.5 and per_packet.max() <= 1522 + 0.5


def test_real_arrivals_replay_the_measured_seconds(dists, population):
    seconds = np.floor(population["ts_start"].to_numpy() - dists.first_second).astype(int)
    counts = np.bincount(seconds)
    assert (counts[:-1] == np.rint(dists.arrivals[: len(counts) - 1])).all()  # the last second is partial
    assert np.all(np.diff(population["ts_start"].to_numpy()) >= 0)


def test_hour_arrivals_spread_over_the_hour(dists):
    frame = generate_population(20_000, dists, seed=1, arrivals=ARRIVALS_HOUR)
    span = frame["ts_start"].iloc[-1] - frame["ts_start"].iloc[0]
    assert span > 0.95 * len(dists.arrivals)


def test_durations_follow_the_rate_model_and_the_exporter_timeouts():
    rng = np.random.default_rng(0)
    packets = np.array([1] * 1000 + [2] * 1000 + [10**6] * 1000)
    duration = durations(packets, rng)
    assert (duration[:1000] == 0).all()
    assert (duration[1000:2000] > 0).all() and (duration[1000:2000] <= 15.0).all()
    assert duration.max() <= ACTIVE_TIMEOUT_S
    assert np.median(duration[1000:2000]) < np.median(duration[2000:])


def test_population_is_valid_flow_records_with_real_flow_ids(population):
    records = conform(population.head(500))  # the schema's types and value checks
    row = records.iloc[0]
    key, _forward = FlowKey.between(int(row.proto), ip_to_bytes(row.src_addr), int(row.sport),
                                    ip_to_bytes(row.dst_addr), int(row.dport))  # fmt: skip
    assert key.flow_id == int(row.flow_id)


def test_equal_seeds_give_equal_populations(dists):
    first = generate_population(3000, dists, seed=11)
    pd.testing.assert_frame_equal(first, generate_population(3000, dists, seed=11))
    assert not first["flow_id"].equals(generate_population(3000, dists, seed=12)["flow_id"])


def test_bad_requests_and_files_are_refused_with_the_reason(dists, tmp_path):
    with pytest.raises(PopulationError, match="at least one flow"):
        generate_population(0, dists, seed=0)
    with pytest.raises(PopulationError, match="arrivals"):
        generate_population(10, dists, seed=0, arrivals="tomorrow")
    with pytest.raises(DistributionError, match="no such distribution directory"):
        load_distributions(tmp_path / "absent")
    bad = tmp_path / "length.csv"
    bad.write_text("lo,hi,flows\n1,2,3\n")
    with pytest.raises(DistributionError, match="header"):
        read_histogram(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("bin_lo,bin_hi,flows_sum,packets_sum,octets_sum\n")
    with pytest.raises(DistributionError, match="no flows"):
        read_histogram(empty)
