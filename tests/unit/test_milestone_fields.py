"""Milestone entries with what the primary knows (``idle_s``, ``closing``) reach the director as before."""

from __future__ import annotations

from prism.profiles import MODE_STATE
from test_control import ADDRESSES
from test_control_milestones import controller


def test_a_milestone_entry_with_idle_and_closing_is_read_and_a_longer_one_too():
    ctl = controller()
    ctl.start_flows(2)
    ctl.run(0.2)
    first, second = list(ctl.director.flows)
    primary = first.profile.primary_cell
    rows = [[first.flow_id, 0.25, 5, 500, 0.12, False], [second.flow_id, 0.25, 5, 500, 0.1, True, "later"]]
    if second.profile.primary_cell != primary:
        rows = rows[:1]
    report = {"type": "milestone", "cell": primary, "flows": rows}
    ctl.take(ctl.control.on_mgmt_message(report, (ADDRESSES[primary][0], 7700), ctl.now))
    assert first.profile.replication_factor == 1 and first.mode == MODE_STATE
    if len(rows) == 2:
        assert second.profile.replication_factor == 1
    assert ctl.control.counts["milestone_messages"] == 1
