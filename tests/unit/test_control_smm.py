"""The controller's core and real State Mirroring Modules together, on a fake switch and an in-memory network."""

from __future__ import annotations

import random
from typing import Dict, List

from cell_helpers import Conversation
from prism.mgmt import protocol as mgmt
from prism.director.actions import MgmtMessage
from prism.cell.cell import Cell
from prism.cell.conntrack import ConnTracker
from prism.cell.smm import StateMirroringModule
from prism.config.load import CellConfig, SwitchConfig
from prism.control.plane import DIRECTORY_REFRESH_S, ControlPlane, SwitchChange
from prism.director.core import MirroringDirector
from testkit.fakeswitch import FakeSwitch
from prism.flows.identity import TCP_ACK, TCP_SYN
from prism.control.health import HealthSettings
from testkit.oxm import to_frame
from prism.policy.base import FixedPolicy
from prism.placement.ring import HashRing
from smm_helpers import CONTROLLER, FakeNetwork, address_of

CELLS = {"c1": 11, "c2": 12, "c3": 13}
CLIENT_PORT, SERVER_PORT = 1, 2
CLIENT_MAC, SERVER_MAC = "02:00:00:00:01:01", "02:00:00:00:02:02"
TICK = 0.05  #: the controller's tick; cells tick and beat every other one
SETTINGS = HealthSettings(heartbeat_interval=0.1, dead_after=0.35, alive_after=1.0)


class Bench:
    """A controller (control plane, director, fake switch) and cells whose SMMs start when told."""

    def __init__(self) -> None:
        config = SwitchConfig(dp_id=1, name="s1", cells=tuple(CellConfig(c, p) for c, p in CELLS.items()),
                              edge_ports=(CLIENT_PORT, SERVER_PORT))  # fmt: skip
        self.ring = HashRing(list(CELLS))
        self.director = MirroringDirector(config, 10, FixedPolicy(self.ring, 1), ring=self.ring)
        self.control = ControlPlane({1: self.director}, 0.0, SETTINGS, {c: address_of(c) for c in CELLS})
        self.switch = FakeSwitch()
        self.network = FakeNetwork(random.Random(1))
        self.cells: Dict[str, Cell] = {}
        self.smms: Dict[str, StateMirroringModule] = {}
        self.lost: List[MgmtMessage] = []  #: controller messages to cells not running yet
        self.now = 0.0
        self.steps = 0
        self.switch.apply(self.director.on_switch_connect(self.now), now=self.now)

    def start_cell(self, cell_id: str) -> None:
        cell = Cell(cell_id, ConnTracker())
        smm = StateMirroringModule(cell, self.network.transport(address_of(cell_id)), CONTROLLER,
                                   rng=random.Random(cell_id))  # fmt: skip
        cell.add_tick_hook(smm.tick_hook)
        self.cells[cell_id], self.smms[cell_id] = cell, smm
        self.network.endpoints[address_of(cell_id)] = smm

    def take(self, outgoing) -> None:
        for item in outgoing:
            if isinstance(item, SwitchChange):
                self.deliver_to_cells(self.switch.apply([item.change], now=self.now).outputs)
            elif item.cell_id in self.smms:
                self.smms[item.cell_id].on_datagram(mgmt.encode(dict(item.message)), CONTROLLER, self.now)
            else:
                self.lost.append(item)

    def deliver_to_cells(self, outputs) -> None:
        ports = {port: cell_id for cell_id, port in CELLS.items()}
        for port, packet in outputs:
            cell = self.cells.get(ports.get(port))
            if cell is not None:
                cell.handle_frame(to_frame(packet), self.now)

    def send(self, in_port: int, frame: bytes) -> None:
        """One frame from a host through the switch (packet-ins answered by the director)."""
        result = self.switch.process(in_port, frame, now=self.now)
        self.deliver_to_cells(result.outputs)
        for packet_in in result.packet_ins:
            changes = self.director.on_packet_in(self.now, packet_in.in_port, packet_in.table_id, packet_in.data)
            self.deliver_to_cells(self.switch.apply(changes, now=self.now).outputs)

    def handshake(self, conv: Conversation) -> None:
        macs = {True: dict(eth_src=CLIENT_MAC, eth_dst=SERVER_MAC), False: dict(eth_src=SERVER_MAC, eth_dst=CLIENT_MAC)}
        frames = (
            (True, conv.frame(True, TCP_SYN, seq=conv.client_isn, ack=0, advance=False)),
            (False, conv.frame(False, TCP_SYN | TCP_ACK, seq=conv.server_isn, advance=False)),
            (True, conv.frame(True, TCP_ACK)),
        )
        for from_client, frame in frames:
            self.send(CLIENT_PORT if from_client else SERVER_PORT, _with_macs(frame, **macs[from_client]))

    def run(self, seconds: float) -> None:
        """Time passes: the controller ticks, running cells tick and beat, datagrams are delivered."""
        for _ in range(int(round(seconds / TICK))):
            self.now = round(self.now + TICK, 6)
            self.steps += 1
            self.take(self.control.tick(self.now))
            if self.steps % 2 == 0:
                for cell_id, cell in self.cells.items():
                    cell.tick(self.now)
                    self.smms[cell_id].heartbeat(self.now)
            self.network.deliver(self.now)
            beats, self.network.to_controller = self.network.to_controller, []
            for message in beats:
                sender = address_of(message["cell"])
                self.take(self.control.on_mgmt_message(message, sender, self.now))


def _with_macs(frame: bytes, eth_src: str, eth_dst: str) -> bytes:
    return bytes.fromhex(eth_dst.replace(":", "")) + bytes.fromhex(eth_src.replace(":", "")) + frame[12:]


def _conversations_with_distinct_profiles(bench: Bench, count: int) -> List[Conversation]:
    """Connections (one client, one server) whose flows the ring places on ``count`` different profiles."""
    chosen, orders = [], set()
    for client_port in range(45100, 46100):
        conv = Conversation(client="172.31.0.1", server="172.31.0.5", client_port=client_port, server_port=5401)
        order = tuple(bench.ring.order(conv.syn().key.flow_id)[:2])
        if order not in orders:
            orders.add(order)
            chosen.append(Conversation(client="172.31.0.1", server="172.31.0.5", client_port=client_port,
                                       server_port=5401))  # fmt: skip
        if len(chosen) == count:
            return chosen
    raise AssertionError("no such ports")


def test_cells_started_after_the_controller_replicate_their_first_flows_without_waiting_for_a_refresh():
    """The failover test's start: controller first, then the cells, then two connections on two profiles.

    The controller's start-up directory reaches no cell; a cell must neither
    replicate its flows' first changes to nobody nor wait for the periodic
    directory: the mirror holds the primary's token well before a refresh.
    """
    bench = Bench()
    bench.run(0.5)
    assert [m for m in bench.lost if m.type == "directory"]  # sent before any cell listened
    for cell_id in CELLS:
        bench.start_cell(cell_id)
        bench.run(0.4)
    conversations = _conversations_with_distinct_profiles(bench, 2)
    for conv in conversations:
        bench.handshake(conv)
        bench.run(TICK)
    bench.run(1.0)
    assert bench.now < DIRECTORY_REFRESH_S
    for conv in conversations:
        flow_id = conv.syn().key.flow_id
        profile = bench.director.flows.get(flow_id).profile
        primary = bench.cells[profile.primary_cell].tracker.get(conv.syn().key)
        assert primary is not None and primary.token
        for mirror_cell in profile.mirror_cells:
            mirror = bench.cells[mirror_cell].tracker.get(conv.syn().key)
            assert mirror is not None and mirror.token == primary.token, (profile, mirror_cell)
            assert mirror.first_seen == primary.first_seen
