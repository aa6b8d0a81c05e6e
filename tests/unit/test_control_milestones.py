"""The control plane passes ``milestone`` reports to the directors and per-flow ``seeded`` back; the directory."""

from __future__ import annotations

from prism.control.plane import ControlPlane
from prism.placement.profiles import MODE_STATE, MirroringProfile
from test_control import ADDRESSES, SETTINGS, Controller
from test_failover import CLIENT_PORT


class AtMilestones:
    """No mirror at birth; one mirror in state mode at any milestone."""

    milestones_s = (1.0, 0.25)

    def __init__(self, base) -> None:
        self.base = base

    def profile_for(self, info, live, now):
        return MirroringProfile.of(self.base.profile_for(info, live, now).primary_cell)

    def mode_for(self, flow_id):
        return "full"

    def redecide(self, flow_id, current, age_s, packets, byte_count, live_cells, now):
        mirror = next(c for c in sorted(live_cells) if c != current.primary_cell)
        return MirroringProfile.of(current.primary_cell, mirror), MODE_STATE


def controller() -> Controller:
    controller = Controller(replication_factor=0)
    controller.director.policy = AtMilestones(controller.director.policy)
    return controller


def test_directory_carries_milestones_and_the_state_settings():
    ctl = controller()
    plane = ControlPlane({1: ctl.director}, 0.0, SETTINGS, ADDRESSES, state_interval_s=0.5,
                         takeover_tolerance_bytes=1 << 20)  # fmt: skip
    body = plane.directory(0.0)[0].message
    assert (body["milestones_s"], body["state_interval_s"], body["takeover_tolerance_bytes"]) == (
        [0.25, 1.0], 0.5, 1 << 20,
    )  # fmt: skip
    assert "state_interval_s" not in ctl.control.directory(0.0)[0].message


def test_a_milestone_report_promotes_the_flow_and_its_seeded_report_completes_it():
    ctl = controller()
    packet = ctl.start_flows(1)[0]
    ctl.run(0.2)
    entry = next(iter(ctl.director.flows))
    primary = entry.profile.primary_cell
    report = {"type": "milestone", "cell": primary, "flows": [[entry.flow_id, 0.25, 5, 500], ["bad"], 7]}
    ctl.take(ctl.control.on_mgmt_message(report, (ADDRESSES[primary][0], 7700), ctl.now))
    assert entry.profile.replication_factor == 1 and entry.mode == MODE_STATE
    mirror = entry.profile.mirror_cells[0]
    assert ctl.switch.process(CLIENT_PORT, packet).ports, "the flow still forwards"
    ctl.messages.clear()
    ctl.run(0.1)
    seed = next(m for m in ctl.messages if m.type == "seed")
    assert (seed.cell_id, seed.message["flows"], seed.message["target"]) == (primary, [entry.flow_id], mirror)
    seeded = {"type": "seeded", "cell": primary, "profile_id": seed.message["profile_id"], "target": mirror,
              "flows": [entry.flow_id], "count": 1}  # fmt: skip
    ctl.take(ctl.control.on_mgmt_message(seeded, (ADDRESSES[primary][0], 7700), ctl.now))
    assert ctl.director.flow_seed_targets(entry.flow_id) == []
    assert ctl.director.counters.flow_seeds_confirmed == 1
    bad = {"type": "milestone", "cell": primary, "flows": "nope"}
    ctl.take(ctl.control.on_mgmt_message(bad, (ADDRESSES[primary][0], 7700), ctl.now))
    assert ctl.control.counts["mgmt_malformed"] == 1 and ctl.control.counts["milestone_messages"] == 1
