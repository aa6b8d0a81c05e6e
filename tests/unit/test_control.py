"""The control plane: heartbeats, port status and seeded reports in; switch changes and cell messages out."""

from __future__ import annotations

import json
from typing import List

import pytest

from prism.director.actions import MgmtMessage
from prism.config.load import CellConfig, SwitchConfig
from prism.control.plane import ControlPlane, SwitchChange
from prism.director.core import MirroringDirector
from prism.director.failover import UnknownCell
from testkit.fakeswitch import FakeSwitch
from prism.control.health import HealthSettings
from prism.openflow.changes import Command, GroupMod
from prism.policy.base import FixedPolicy
from prism.placement.ring import HashRing
from test_failover import CLIENT_PORT, FOUR_CELLS, udp

SETTINGS = HealthSettings(heartbeat_interval=0.1, dead_after=0.35, alive_after=1.0, holddown_base=1.0)
ADDRESSES = {cell: (f"172.30.0.{10 + i}", 7700) for i, cell in enumerate(FOUR_CELLS)}
TICK = 0.05


class Controller:
    """A control plane over one director and a fake switch; cells beat on demand."""

    def __init__(self, replication_factor: int = 1) -> None:
        config = SwitchConfig(
            dp_id=1, name="s1", cells=tuple(CellConfig(c, p) for c, p in FOUR_CELLS.items()), edge_ports=(1, 2)
        )
        ring = HashRing(list(FOUR_CELLS))
        self.director = MirroringDirector(config, 10, FixedPolicy(ring, replication_factor), ring=ring)
        self.control = ControlPlane({1: self.director}, 0.0, SETTINGS, ADDRESSES)
        self.switch = FakeSwitch()
        self.now = 0.0
        self.seq = {cell: 0 for cell in FOUR_CELLS}
        self.messages: List[MgmtMessage] = []
        self.ofchanges: List = []
        self.take(self.director.on_switch_connect(0.0))

    def take(self, outgoing) -> None:
        for item in outgoing:
            if isinstance(item, SwitchChange):
                self.ofchanges.append(item.change)
                self.switch.apply([item.change], now=self.now)
            elif isinstance(item, MgmtMessage):
                json.dumps(item.message)  # every message must be JSON
                self.messages.append(item)
            else:
                self.switch.apply([item], now=self.now)

    def run(self, seconds: float, beating=("c1", "c2", "c3", "c4")) -> None:
        """Let time pass: the ``beating`` cells send heartbeats every 0.1 s, the controller ticks."""
        steps = int(round(seconds / TICK))
        for _ in range(steps):
            self.now = round(self.now + TICK, 6)
            if round(self.now / TICK) % 2 == 0:
                for cell in beating:
                    self.seq[cell] += 1
                    self.heartbeat(cell)
            self.take(self.control.tick(self.now))

    def heartbeat(self, cell: str, seq=None, host=None) -> None:
        message = {"type": "heartbeat", "cell": cell, "seq": self.seq[cell] if seq is None else seq, "flows": 3}
        self.take(self.control.on_mgmt_message(message, (host or ADDRESSES[cell][0], 7700), self.now))

    def start_flows(self, count: int = 40):
        packets = [udp(40000 + i) for i in range(count)]
        for packet in packets:
            result = self.switch.process(CLIENT_PORT, packet, now=self.now)
            for packet_in in result.packet_ins:
                self.switch.apply(
                    self.director.on_packet_in(self.now, packet_in.in_port, packet_in.table_id, packet_in.data)
                )
        return packets

    def group_mods(self) -> List[GroupMod]:
        mods = [c for c in self.ofchanges if isinstance(c, GroupMod) and c.command is Command.MODIFY]
        self.ofchanges.clear()
        return mods


def test_a_silent_process_is_failed_over_by_heartbeat_timeout():
    controller = Controller()
    packets = controller.start_flows()
    controller.run(1.0)
    assert controller.group_mods() == []
    groups = controller.director.profiles_naming("c2")
    controller.run(1.0, beating=("c1", "c3", "c4"))  # c2's process died
    assert "c2" in controller.director.down_cells
    assert len(controller.group_mods()) == 2 * len(groups)
    assert controller.director.last_failover.kind == "process"
    assert controller.control.detector.history("c2")[0].detected_at - controller.control.detector.history(
        "c2"
    )[0].started_at == pytest.approx(0.4, abs=0.06)
    for packet in packets:
        assert FOUR_CELLS["c2"] not in controller.switch.process(CLIENT_PORT, packet).ports
    directories = [m for m in controller.messages if m.type == "directory"]
    assert directories[-1].message["live"] == ["c1", "c3", "c4"]
    assert {m.cell_id for m in directories[-4:]} == set(FOUR_CELLS)


def test_a_flapping_link_is_held_down_longer_each_time_and_rewrites_only_on_real_changes():
    controller = Controller()
    controller.start_flows()
    controller.run(1.0)
    port = FOUR_CELLS["c3"]
    time_out = []
    for _ in range(3):
        controller.take(controller.control.on_port_status(1, port, False, controller.now))
        assert "c3" in controller.director.down_cells
        controller.run(0.2)
        controller.take(controller.control.on_port_status(1, port, True, controller.now))
        went_up = controller.now
        while "c3" in controller.director.down_cells:
            controller.run(TICK)
        time_out.append(round(controller.now - went_up, 2))
        controller.run(0.5)
    assert time_out == [1.0, 2.0, 3.0]  # alive_after, then + 1 s, + 2 s of hold-down
    assert controller.director.counters.failovers == 3 and controller.director.counters.recoveries == 3


def test_port_status_of_a_non_cell_port_or_unknown_switch_is_ignored():
    controller = Controller()
    assert controller.control.on_port_status(1, 1, False, 0.0) == []
    assert controller.control.on_port_status(99, 11, False, 0.0) == []
    assert controller.director.down_cells == frozenset()


def test_seeded_reports_reach_the_director_and_management_noise_is_counted():
    controller = Controller(replication_factor=1)
    controller.start_flows()
    controller.take(controller.control.on_port_status(1, FOUR_CELLS["c1"], False, 0.0))
    seeds = [m for m in controller.messages if m.type == "seed"]
    assert seeds
    for seed in seeds:
        reply = {"type": "seeded", "cell": seed.cell_id, "profile_id": seed.message["profile_id"],
                 "target": seed.message["target"], "flows": 2}  # fmt: skip
        controller.take(controller.control.on_mgmt_message(reply, (ADDRESSES[seed.cell_id][0], 7700), 0.1))
    assert all(not g.pending_mirrors for g in controller.director.groups.values())
    control = controller.control
    control.on_mgmt_message({"type": "heartbeat", "cell": "c9"}, ("172.30.0.99", 7700), 0.2)
    control.on_mgmt_message({"type": "heartbeat", "cell": "c2"}, ("172.30.0.99", 7700), 0.2)
    control.on_mgmt_message({"type": "seeded", "cell": "c2", "profile_id": "x"}, (ADDRESSES["c2"][0], 7700), 0.2)
    control.on_mgmt_message({"type": "state", "cell": "c2"}, (ADDRESSES["c2"][0], 7700), 0.2)
    assert (
        control.counts["mgmt_unknown_sender"], control.counts["mgmt_wrong_address"],
        control.counts["mgmt_malformed"], control.counts["mgmt_ignored"],
    ) == (1, 1, 1, 1)  # fmt: skip


def test_drain_and_restore_through_the_control_plane_and_unknown_cells():
    controller = Controller()
    controller.start_flows()
    controller.take(controller.control.drain("c4", 0.0))
    assert controller.control.cell("c4", 0.0)["draining"] is True
    assert controller.control.cell("c4", 0.0)["usable"] is False
    with pytest.raises(UnknownCell):
        controller.control.drain("nope", 0.0)
    with pytest.raises(UnknownCell):
        controller.control.cell("nope", 0.0)
    controller.take(controller.control.restore("c4", 0.0))
    assert "c4" in controller.director.live_cells


def test_views_report_flows_per_cell_profiles_and_risk():
    controller = Controller(replication_factor=1)
    packets = controller.start_flows()
    controller.run(0.5)
    control = controller.control
    status = control.status(controller.now)
    assert status["flows_total"] == status["flows_active"] == len(packets)
    assert status["cells_alive"] == 4 and status["last_failover"] is None
    cells = control.cells(controller.now)
    assert sum(c["flows_primary"] for c in cells) == len(packets)
    assert sum(c["flows_mirror"] for c in cells) == len(packets)
    assert all(0 < c["failure_probability"] < 0.01 and c["last_report"]["flows"] == 3 for c in cells)
    profiles = control.profiles()
    assert sum(p["refcount"] for p in profiles) == len(packets)
    assert all(p["replicas_confirmed"] == 1 for p in profiles)
    listed = control.flows("c1")
    assert listed["total"] == sum(1 for f in listed["flows"] if "c1" in [f["primary_cell"], *f["mirror_cells"]])
    assert control.flows(limit=5)["truncated"] is True
    json.dumps([status, cells, profiles, listed])


def test_flows_a_cell_holds_without_an_assignment_are_assigned_again():
    controller = Controller(replication_factor=1)
    packets = controller.start_flows(10)
    from test_failover import flow_id

    ids = [flow_id(p) for p in packets]
    mine = [f for f in ids if "c1" in controller.director.flows.get(f).profile.cells]
    controller.messages.clear()
    heartbeat = {"type": "heartbeat", "cell": "c1", "seq": 1, "unassigned": mine + [12345, "x"]}
    controller.take(controller.control.on_mgmt_message(heartbeat, (ADDRESSES["c1"][0], 7700), 0.1))
    [assign] = [m for m in controller.messages if m.type == "assign"]
    assert assign.cell_id == "c1" and sorted(f for f, _, _ in assign.message["flows"]) == sorted(mine)
    assert controller.control.counts["reassigned"] == len(mine)


def test_a_cell_heard_for_the_first_time_gets_the_directory_at_once():
    controller = Controller()
    controller.take(controller.control.tick(0.05))  # the start-up directory: no cell listened yet
    controller.messages.clear()
    controller.now = 1.0
    controller.heartbeat("c2", seq=1)  # started after it, the next refresh is 4 s away
    [directory] = [m for m in controller.messages if m.type == "directory"]
    assert directory.cell_id == "c2" and directory.message["live"] == sorted(FOUR_CELLS)
    controller.messages.clear()
    controller.heartbeat("c2", seq=2)
    controller.heartbeat("c3", seq=40)  # a controller restarted under a running cell
    assert [(m.type, m.cell_id) for m in controller.messages] == [("directory", "c3")]


def test_a_cell_that_joins_a_group_is_assigned_its_flows():
    controller = Controller(replication_factor=1)
    controller.start_flows(30)
    groups = controller.director.profiles_naming("c2")
    controller.messages.clear()
    controller.take(controller.control.on_port_status(1, FOUR_CELLS["c2"], False, 0.0))
    assert [m for m in controller.messages if m.type == "assign"] == []  # off the failover's path
    controller.take(controller.control.tick(0.05))
    assigns = [m for m in controller.messages if m.type == "assign"]
    for group in groups:
        new = controller.director.groups[group.group_id].profile
        [joined] = [c for c in new.cells if c not in group.profile.cells]
        flows = [f for m in assigns if m.cell_id == joined for f in m.message["flows"] if f[1] == group.group_id]
        assert len(flows) == group.refcount
