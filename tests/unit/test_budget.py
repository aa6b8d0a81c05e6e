"""The budget tracker: training threshold first, then a line fitted on recent flows that spends the budget."""

from __future__ import annotations

import random

import pytest

from prism.policy.budget import BudgetSettings, BudgetTracker, bin_floor, score_bin


def tracker(budget=0.25, initial=10.0, **settings) -> BudgetTracker:
    settings = {"start_window": 1000, "end_window": 1000, "min_flows": 10, "refit_every": 1, **settings}
    return BudgetTracker(BudgetSettings(budget, **settings), initial)


def flow_ids(count: int, seed: int = 0):
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


def run(budget: BudgetTracker, population, seed: int = 0):
    """Start every flow of ``population`` ((score, packets)), then end them all; returns copies per packet."""
    ids = flow_ids(len(population), seed)
    decided = [budget.mirrors(score, flow_id) for (score, _p), flow_id in zip(population, ids)]
    for (score, packets), mirrored in zip(population, decided):
        budget.observe(score, packets, int(mirrored))
    return sum(p for (_s, p), m in zip(population, decided) if m) / sum(p for _s, p in population)


def test_bins():
    assert score_bin(0.0) == 0 and score_bin(-3.0) == 0
    assert score_bin(1.0) == 4 and score_bin(3.0) == 8
    assert bin_floor(score_bin(7.3)) <= 7.3 < bin_floor(score_bin(7.3) + 1)


def test_the_training_threshold_holds_until_enough_flows_ended():
    budget = tracker(initial=10.0)
    assert budget.mirrors(10.5, 1) and not budget.mirrors(9.9, 1)
    for _ in range(9):
        budget.observe(1.0, 10, 0)
    assert budget.threshold == 10.0 and not budget.fitted
    budget.observe(1.0, 10, 0)
    assert budget.fitted


def test_no_initial_threshold_mirrors_nothing():
    budget = tracker(initial=None)
    assert not budget.mirrors(1e9, 1)
    assert budget.status()["threshold_s"] is None


def test_the_fit_spends_the_budget_on_recent_flows():
    # four kinds of flows, 10 packets each: the best quarter of the packets is the top kind
    population = [(score, 10) for score in (0.5, 2.0, 6.0, 30.0) for _ in range(50)]
    random.Random(3).shuffle(population)
    budget = tracker(budget=0.25, initial=100.0)
    run(budget, population)
    assert budget.threshold == bin_floor(score_bin(30.0)) and budget.share_at_threshold == pytest.approx(1.0)
    again = run(budget, population, seed=1)
    assert again == pytest.approx(0.25)
    budget = tracker(budget=0.125, initial=100.0)
    run(budget, population)
    assert budget.share_at_threshold == pytest.approx(0.5), "the crossing bin is mirrored in part"
    assert run(budget, population * 4, seed=2) == pytest.approx(0.125, rel=0.15), "split by the flow_id hash"


def test_a_flows_decision_at_the_line_is_stable():
    budget = tracker(budget=0.125, initial=100.0)
    run(budget, [(score, 10) for score in (0.5, 2.0, 6.0, 30.0) for _ in range(50)])
    assert budget.mirrors(30.0, 12345) == budget.mirrors(30.0, 12345)
    assert budget.mirrors(30.0, 2**64 - 1) is False and budget.mirrors(30.0, 0) is True


def test_a_burst_of_high_scores_raises_the_line_before_any_of_them_ends():
    population = [(score, 10) for score in (0.5, 2.0, 6.0, 30.0) for _ in range(50)]
    budget = tracker(budget=0.25, initial=100.0, start_window=200)
    run(budget, population)
    assert budget.mirrors(30.0, 1)
    burst = [budget.mirrors(30.0, flow_id) for flow_id in flow_ids(150, seed=5)]
    assert sum(burst[:10]) == 10 and sum(burst[-50:]) < 30, "most of the burst is left unmirrored"
    assert budget.threshold == bin_floor(score_bin(30.0)) and budget.share_at_threshold < 0.5


def test_packets_per_flow_come_from_ended_flows_of_the_same_bin():
    budget = tracker(budget=0.5, initial=100.0)
    population = [(1.0, 1000)] * 20 + [(50.0, 2)] * 20  # long-scored flows here carry few packets
    assert run(budget, population) == 0.0, "training threshold 100 s: nothing mirrored at first"
    assert budget.packets_per_flow(score_bin(50.0)) == 2 and budget.packets_per_flow(score_bin(1.0)) == 1000
    assert budget.packets_per_flow(score_bin(50.0) + 3) == 2, "an empty bin borrows its nearest"
    assert run(budget, population, seed=1) == pytest.approx(0.5, abs=0.06)


def test_two_mirrors_per_flow_halve_the_flows_mirrored():
    population = [(score, 10) for score in (0.5, 2.0, 6.0, 30.0) for _ in range(50)]
    one, two = tracker(budget=0.25, initial=20.0), tracker(budget=0.25, initial=20.0)
    for budget, factor in ((one, 1), (two, 2)):
        ids = flow_ids(len(population))
        for (score, packets), flow_id in zip(population, ids):
            mirrored = budget.mirrors(score, flow_id)
            budget.observe(score, packets, factor if mirrored else 0)
    assert one.share_at_threshold == pytest.approx(1.0)
    assert two.share_at_threshold == pytest.approx(0.5)


def test_the_windows_forget_and_reset_starts_over():
    budget = tracker(budget=0.5, start_window=20, end_window=20, min_flows=10)
    run(budget, [(100.0, 10)] * 20)
    assert budget.realised_share() == pytest.approx(1.0)
    run(budget, [(1.0, 10)] * 20)
    assert budget.realised_share() < 0.5 and budget.threshold == bin_floor(score_bin(1.0))
    budget.reset(7.0)
    assert (budget.threshold, budget.fitted, budget.realised_share()) == (7.0, False, None)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        BudgetSettings(0.0)
    with pytest.raises(ValueError):
        BudgetSettings(0.2, end_window=10, min_flows=20)
    with pytest.raises(ValueError):
        BudgetSettings(0.2, refit_every=0)


def test_copies_spent_outside_the_line_are_taken_off_the_budget():
    # four kinds, 10 packets each; a tenth of the packets was mirrored regardless of the line
    population = [(score, 10) for score in (0.5, 2.0, 6.0, 30.0) for _ in range(50)]
    budget = tracker(budget=0.35, initial=100.0)
    ids = flow_ids(len(population))
    for score, flow_id in zip((s for s, _p in population), ids):
        budget.mirrors(score, flow_id)
    for index, (score, packets) in enumerate(population):
        cheap = score == 0.5 and index % 5 < 2  # 20 of the 200 flows, below any line
        budget.observe(score, packets, int(cheap), outside_line=cheap)
    budget.fit()
    assert budget.outside_line_share() == pytest.approx(0.1)
    assert budget.status()["outside_line_share"] == pytest.approx(0.1)
    # 0.35 - 0.1 leaves a quarter: the top kind only, as with a budget of 0.25 and nothing outside
    assert budget.threshold == bin_floor(score_bin(30.0)) and budget.share_at_threshold == pytest.approx(1.0)
    plain = tracker(budget=0.35, initial=100.0)
    run(plain, population)
    assert plain.threshold < budget.threshold, "without copies outside the line, more is mirrored by the line"
