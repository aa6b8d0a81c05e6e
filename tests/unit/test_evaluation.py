"""Policy evaluation: expected protection over a uniform failure time, at equal mirroring budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.evaluation import fixed_policy, format_table, policy_table, ranked_policy, threshold_policy

# Three flows: a long one with few packets, a long heavy one, and an instant one.
DURATION = np.array([10.0, 10.0, 0.0])
PACKETS = np.array([10.0, 80.0, 10.0])


def test_fixed_policies():
    none = fixed_policy(DURATION, PACKETS, 0, "none")
    rf1 = fixed_policy(DURATION, PACKETS, 1, "rf1")
    rf2 = fixed_policy(DURATION, PACKETS, 2, "rf2")
    assert (none.flows_mirrored, none.packets_mirrored, none.packets_protected) == (0.0, 0.0, 0.0)
    assert (rf1.packets_mirrored, rf1.flows_protected, rf1.packets_protected_2) == (1.0, 1.0, 0.0)
    assert (rf2.packets_mirrored, rf2.packets_protected_2) == (2.0, 1.0)


def test_risk_is_weighted_by_duration_and_packets_times_duration():
    # Mirror only the light long flow: half the at-risk flows (durations 10 and 10),
    # 10*10 / (10*10 + 80*10) of the at-risk packets, for 10% of the packets.
    row = threshold_policy(DURATION, PACKETS, np.array([1.0, 0.0, 0.0]), 0.5, "x")
    assert row.flows_protected == pytest.approx(0.5)
    assert row.packets_protected == pytest.approx(100 / 900)
    assert row.packets_mirrored == pytest.approx(0.1)


def test_ranked_policy_spends_exactly_the_budget_and_splits_ties():
    row = ranked_policy(DURATION, PACKETS, np.array([1.0, 1.0, 0.0]), 0.45, "tied")
    assert row.packets_mirrored == pytest.approx(0.45)
    # The tied block (90 packets) is mirrored in part: 45/90 of its protection.
    assert row.packets_protected == pytest.approx(0.5) and row.threshold == 1.0
    best = ranked_policy(DURATION, PACKETS, np.array([2.0, 1.0, 0.0]), 0.1, "best")
    assert best.flows_protected == pytest.approx(0.5)


def test_oracle_is_never_worse_than_random_or_a_model():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"duration_s": rng.exponential(5, 500), "packets": rng.integers(1, 200, 500)})
    noisy = frame["duration_s"].to_numpy() * rng.lognormal(0, 1, 500)
    rows = policy_table(frame, {"model": noisy}, budgets=(0.1, 0.3))
    by_name = {(r.policy, r.budget): r for r in rows}
    for budget in (0.1, 0.3):
        oracle, model, random = (by_name[(name, budget)] for name in ("oracle", "model", "random"))
        assert oracle.packets_protected >= model.packets_protected >= random.packets_protected
        assert model.packets_mirrored == pytest.approx(budget)
    assert "| oracle | 10% |" in format_table(rows)
