"""The failure detector: heartbeats and links in, DEAD/ALIVE changes out, hysteresis, history, risk."""

from __future__ import annotations

import math

import pytest

from prism.control.health import (
    CellState,
    FailureDetector,
    FailureKind,
    HealthSettings,
)

INTERVAL = 0.1
SETTINGS = HealthSettings(
    heartbeat_interval=INTERVAL, dead_after=0.35, alive_after=1.0,
    holddown_base=1.0, holddown_max=8.0, flap_window=60.0,
)  # fmt: skip


def beat(detector, cell_id, start, stop, interval=INTERVAL):
    """Heartbeats from ``start`` (inclusive) to ``stop`` (exclusive), ticking after each; returns changes.

    The sequence number follows the clock, as from one process that never restarts.
    """
    changes = []
    steps = int(round((stop - start) / interval))
    for i in range(steps):
        now = start + i * interval
        changes += detector.on_heartbeat(cell_id, now, int(round(now / interval)))
        changes += detector.tick(now + interval / 2)
    return changes


def test_cells_start_alive_and_a_cell_that_never_beats_is_judged_by_its_link():
    detector = FailureDetector(["c1", "c2"], now=0.0, settings=SETTINGS)
    assert detector.usable_cells == ("c1", "c2")
    assert detector.tick(100.0) == []  # no heartbeat ever: not declared dead
    assert not detector.health("c1").heartbeat_seen
    [change] = detector.on_link("c1", False, 100.0)
    assert (change.cell_id, change.alive, change.kind) == ("c1", False, FailureKind.LINK)
    assert detector.usable_cells == ("c2",)
    assert detector.on_link("c1", True, 101.0) == []
    assert detector.tick(101.9) == []
    [back] = detector.tick(102.0)
    assert back.alive and detector.is_usable("c1")


def test_missed_heartbeats_make_a_cell_dead_after_dead_after_not_before():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    assert beat(detector, "c1", 0.0, 1.0) == []  # last heartbeat at 0.9
    assert detector.tick(0.9 + 0.35) == []  # exactly dead_after: still alive
    [change] = detector.tick(0.9 + 0.36)
    assert (change.alive, change.kind) == (False, FailureKind.PROCESS)
    record = detector.history("c1")[-1]
    assert record.started_at == pytest.approx(0.9) and record.detected_at == pytest.approx(1.26)
    assert record.as_dict(2.0)["detection_s"] == pytest.approx(0.36)
    assert detector.health("c1").state is CellState.DEAD


def test_two_lost_heartbeats_with_jitter_are_survived():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    detector.on_heartbeat("c1", 0.0, 0)
    # heartbeats 1 and 2 lost, heartbeat 3 arrives 40 ms late
    assert detector.tick(0.339) == []
    assert detector.on_heartbeat("c1", 0.34, 3) == []
    assert detector.tick(0.5) == [] and detector.is_usable("c1")


def test_a_dead_cell_comes_back_only_after_alive_after_seconds_of_unbroken_heartbeats():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    beat(detector, "c1", 0.0, 0.5)
    assert [c.alive for c in detector.tick(1.0)] == [False]
    # beats again from 2.0, but with a gap at 2.5 .. 3.0 the streak restarts
    assert beat(detector, "c1", 2.0, 2.5) == []
    changes = beat(detector, "c1", 3.0, 4.0)
    assert changes == []  # 3.0 .. 3.95: less than 1 s of unbroken heartbeats
    changes = beat(detector, "c1", 4.0, 4.2)
    assert [c.alive for c in changes] == [True]
    assert changes[0].at == pytest.approx(4.0, abs=0.06)
    record = detector.history("c1")[-1]
    assert record.ended_at == changes[0].at and record.duration_s(10.0) == pytest.approx(record.ended_at - 0.4)


def test_a_dead_cell_with_fresh_heartbeats_stays_out_while_its_link_is_down():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    beat(detector, "c1", 0.0, 0.5)
    [down] = detector.on_link("c1", False, 0.5)
    assert down.kind is FailureKind.LINK
    assert beat(detector, "c1", 0.5, 3.0) == []  # the process beats over the management network
    assert detector.on_link("c1", True, 3.0) == []
    changes = beat(detector, "c1", 3.0, 4.2)
    assert [c.alive for c in changes] == [True] and changes[0].at >= 4.0


def test_a_restarted_process_is_a_failure_even_if_it_never_missed_a_heartbeat():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    beat(detector, "c1", 0.0, 1.0)  # seq 0..9
    [change] = detector.on_heartbeat("c1", 1.0, 1)  # a new process starts at 1
    assert (change.alive, change.kind) == (False, FailureKind.PROCESS)
    assert "restarted" in change.reason
    # a reordered datagram (seq one behind) is not a restart
    detector2 = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    detector2.on_heartbeat("c1", 0.0, 5)
    assert detector2.on_heartbeat("c1", 0.01, 4) == [] and detector2.is_usable("c1")
    [restart] = detector2.on_heartbeat("c1", 0.02, 2)  # three behind: a restart
    assert not restart.alive


def test_a_flapping_cell_gets_an_increasing_hold_down():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    now = 0.0
    returns = []
    for _ in range(4):
        [down] = detector.on_link("c1", False, now)
        assert not down.alive
        detector.on_link("c1", True, now + 0.1)
        back = []
        while not back:
            now = round(now + 0.05, 2)
            back = detector.tick(now)
        returns.append(round(now - 0.1 - (now - back[0].at), 2))
        now += 0.5
    # time from link up to use: alive_after, then + 1, + 2, + 4 s of hold-down
    downtimes = [detector.history("c1")[i].duration_s(now) for i in range(4)]
    assert [round(d, 1) for d in downtimes] == [1.1, 2.1, 3.1, 5.1]
    assert detector.health("c1").holddown_s == 4.0


def test_hold_down_is_capped_and_forgotten_outside_the_flap_window():
    assert [SETTINGS.holddown(n) for n in range(1, 7)] == [0.0, 0.0 + 1.0, 2.0, 4.0, 8.0, 8.0]
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    detector.on_link("c1", False, 0.0)
    detector.on_link("c1", True, 0.0)
    detector.tick(1.0)
    detector.on_link("c1", False, 100.0)  # the first failure is out of the 60 s window
    assert detector.health("c1").holddown_s == 0.0


def test_failure_probability_follows_the_gamma_poisson_posterior():
    settings = HealthSettings(prior_failures=0.1, prior_exposure_s=3600.0)
    detector = FailureDetector(["steady", "flaky"], now=0.0, settings=settings)
    horizon = 60.0
    prior = detector.failure_probability("steady", horizon, 0.0)
    assert prior == pytest.approx(1 - (3600 / 3660) ** 0.1)
    # flaky fails 3 times, after 200, 199 and 199 s up
    now = 0.0
    for _ in range(3):
        now += 200.0
        detector.on_link("flaky", False, now)
        detector.on_link("flaky", True, now)
        detector.tick(now + 1.0)
    end = now + 1.0
    assert detector.exposure_s("flaky", end) == pytest.approx(598.0)
    flaky = detector.failure_probability("flaky", horizon, end)
    steady = detector.failure_probability("steady", horizon, end)
    assert flaky == pytest.approx(1 - ((598 + 3600) / (598 + 3600 + 60)) ** 3.1)
    assert detector.failure_rate("flaky", end) == pytest.approx(3.1 / 4198)
    assert steady < prior < flaky < 1  # a quiet history lowers the estimate, failures raise it
    assert detector.failure_probability("steady", 0, end) == 0.0
    assert 0.99 < detector.failure_probability("flaky", 1e9, end) <= 1
    assert math.isclose(
        detector.failure_probability("steady", 1.0, end), 1 - math.exp(-detector.failure_rate("steady", end)),
        rel_tol=1e-3,
    )


def test_unknown_cells_are_counted_not_fatal_and_settings_are_validated():
    detector = FailureDetector(["c1"], now=0.0, settings=SETTINGS)
    assert detector.on_heartbeat("stranger", 1.0, 1) == [] and detector.unknown_heartbeats == 1
    assert detector.on_link("stranger", False, 1.0) == []
    with pytest.raises(ValueError, match="dead_after"):
        HealthSettings(heartbeat_interval=0.1, dead_after=0.1)
    with pytest.raises(ValueError, match="alive_after"):
        HealthSettings(alive_after=0)
    with pytest.raises(ValueError, match="hold-down"):
        HealthSettings(holddown_base=5.0, holddown_max=1.0)
