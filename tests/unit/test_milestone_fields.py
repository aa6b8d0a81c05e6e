"""Milestone entries with what the primary knows (``idle_s``, ``closing``) reach the policy's ``redecide``."""

from __future__ import annotations

from prism.placement.profiles import MODE_STATE, MirroringProfile
from test_control import ADDRESSES
from test_control_milestones import AtMilestones, controller


class Listening(AtMilestones):
    """Promotes like ``AtMilestones`` and remembers what each re-decision was told."""

    def __init__(self, base) -> None:
        super().__init__(base)
        self.told = {}

    def redecide(self, flow_id, current, age_s, packets, byte_count, live_cells, now, **known):
        self.told[flow_id] = known
        return super().redecide(flow_id, current, age_s, packets, byte_count, live_cells, now)


def test_idle_and_closing_of_a_milestone_entry_reach_redecide_and_older_or_longer_rows_still_work():
    ctl = controller()
    policy = ctl.director.policy = Listening(ctl.director.policy.base)
    ctl.start_flows(12)
    ctl.run(0.2)
    flows = list(ctl.director.flows)
    primary = max({entry.profile.primary_cell for entry in flows},
                  key=lambda cell: sum(entry.profile.primary_cell == cell for entry in flows))
    same = [entry for entry in flows if entry.profile.primary_cell == primary]
    assert len(same) >= 4  # 12 flows over 3 cells
    rows = [[same[0].flow_id, 0.25, 5, 500, 0.12, False],
            [same[1].flow_id, 0.25, 5, 500, 0.1, True, "a later field"],
            [same[2].flow_id, 0.25, 5, 500],  # a cell before the new fields
            [same[3].flow_id, 0.25, 5, 500, -1, "yes"]]  # malformed: taken as absent  # fmt: skip
    report = {"type": "milestone", "cell": primary, "flows": rows}
    ctl.take(ctl.control.on_mgmt_message(report, (ADDRESSES[primary][0], 7700), ctl.now))
    assert same[0].profile.replication_factor == 1 and same[0].mode == MODE_STATE
    expected = [{"idle_s": 0.12, "closing": False}, {"idle_s": 0.1, "closing": True}, {}, {}]
    assert [policy.told[entry.flow_id] for entry in same[:4]] == expected
    assert ctl.control.counts["milestone_messages"] == 1


def test_the_director_passes_only_what_a_report_carried():
    ctl = controller()
    policy = ctl.director.policy = Listening(ctl.director.policy.base)
    ctl.start_flows(1)
    ctl.run(0.2)
    entry = next(iter(ctl.director.flows))
    ctl.director.on_milestone(entry.profile.primary_cell, [(entry.flow_id, 0.25, 3, 300, None, True)], ctl.now)
    assert policy.told[entry.flow_id] == {"closing": True}
    assert isinstance(entry.profile, MirroringProfile)
