"""The 1 ms probe's analysis: gaps, losses, and a flow that never resumes."""

from mininet_topos.probe import analyse

RATE = 1000.0


def arrivals(first_send, sequences, delay=0.0005):
    return [[n, first_send + n / RATE + delay] for n in sequences]


def test_a_short_outage_is_its_gap_and_its_losses():
    first = 100.0
    received = [n for n in range(3000) if not 1500 <= n < 1530]  # 30 ms lost at 101.5 s
    result = analyse(arrivals(first, received), 3000, fail_time=101.49, rate_hz=RATE, first_send=first)
    assert result["lost"] == 30 and result["lost_after_failure"] == 30
    assert 30.5 < result["max_gap_ms"] < 31.5
    assert result["baseline_max_gap_ms"] < 1.5


def test_a_flow_that_never_resumes_shows_the_whole_silence():
    first = 100.0
    result = analyse(arrivals(first, range(1500)), 3000, fail_time=101.5, window_s=1.0, rate_hz=RATE,
                     first_send=first)
    assert result["lost_after_failure"] == 1001  # due from 101.5 to 102.5 s, both ends
    assert result["max_gap_ms"] > 999


def test_no_failure_no_window():
    result = analyse(arrivals(0.0, range(10)), 10, fail_time=None, rate_hz=RATE)
    assert result["max_gap_ms"] is None and result["lost"] == 0
