"""Test bed for State Mirroring Modules: cells wired by an in-memory network that loses, duplicates and reorders."""

from __future__ import annotations

import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cell_helpers import Conversation
from prism.mgmt import protocol as mgmt
from prism.cell.cell import Cell
from prism.cell.conntrack import ConnTracker, Timeouts, TrackerConfig
from prism.cell.smm import SmmSettings, StateMirroringModule
from prism.flows.identity import mac_to_bytes
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth, Verifier
from prism.openflow.changes import MIRROR_MAC

CONTROLLER = ("172.30.0.254", mgmt.CONTROLLER_MGMT_PORT)
START = 1000.0
STEP = 0.05  #: seconds between two rounds (half a tick)
#: Fields of a record that describe the writing cell, not the flow.
CELL_FIELDS = ("role", "primary_packets", "primary_bytes", "mirror_packets", "mirror_bytes",
               "dropped_packets", "last_seen")  # fmt: skip
_MIRROR_DST = mac_to_bytes(MIRROR_MAC)
#: The management key of authenticated beds (``SmmBed(auth=True)``).
KEY = b"test-key-" + b"0123456789abcdef" * 4


def address_of(cell_id: str) -> Tuple[str, int]:
    """Management address of test cell ``c<i>``."""
    return (f"172.30.0.{10 + int(cell_id[1:])}", mgmt.CELL_MGMT_PORT)


def mirror_copy(frame: bytes) -> bytes:
    """The frame as the switch's mirror bucket sends it (reserved destination MAC)."""
    return _MIRROR_DST + frame[6:]


def flow_state(record: dict) -> dict:
    """A record without what belongs to the cell that wrote it."""
    return {name: value for name, value in record.items() if name not in CELL_FIELDS}


class FakeNetwork:
    """Carries datagrams between addresses; drops, duplicates and reorders chosen shares of them.

    Args:
        rng: Randomness of the faults.
        loss: Share of datagrams dropped.
        duplicate: Share delivered twice.
        reorder: Share held back one round (delivered after later datagrams).
    """

    def __init__(self, rng: random.Random, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0) -> None:  # fmt: skip
        self.rng, self.loss, self.duplicate, self.reorder = rng, loss, duplicate, reorder
        self.endpoints: Dict[Tuple[str, int], StateMirroringModule] = {}
        self.queue: List[Tuple[Tuple[str, int], Tuple[str, int], bytes]] = []
        self.held_back: List[Tuple[Tuple[str, int], Tuple[str, int], bytes]] = []
        self.to_controller: List[dict] = []
        self.datagram_sizes: List[int] = []
        self.dropped = 0
        self.blocked: set = set()  #: destination addresses that receive nothing (a partition)
        #: Opens what cells send the controller when they authenticate (the fake controller has no clock).
        self.controller_verifier: Optional[Verifier] = None

    def transport(self, address: Tuple[str, int]) -> "FakeTransport":
        return FakeTransport(self, address)

    def send(self, source, destination, datagram: bytes) -> bool:
        self.datagram_sizes.append(len(datagram))
        if destination == CONTROLLER:
            if self.controller_verifier is not None:
                datagram = self.controller_verifier.open(datagram, 0.0).body
            self.to_controller.append(mgmt.decode(datagram))
            return True
        self.queue.append((source, destination, datagram))
        return True

    def deliver(self, now: float) -> int:
        """Deliver everything queued (with faults); returns datagrams delivered."""
        batch, self.queue = self.held_back + self.queue, []
        self.held_back = []
        delivered = 0
        for source, destination, datagram in batch:
            if destination in self.blocked or self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if self.rng.random() < self.reorder:
                self.held_back.append((source, destination, datagram))
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                endpoint = self.endpoints.get(destination)
                if endpoint is not None:
                    endpoint.on_datagram(datagram, source, now)
                    delivered += 1
        return delivered

    def controller_messages(self, kind: str) -> List[dict]:
        return [message for message in self.to_controller if message["type"] == kind]


class FakeTransport:
    def __init__(self, network: FakeNetwork, address: Tuple[str, int]) -> None:
        self.network, self.address = network, address

    def sendto(self, datagram: bytes, address: Tuple[str, int]) -> bool:
        return self.network.send(self.address, address, datagram)


def _tokens(seed: int):
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32)


class SmmBed:
    """Cells ``c1..cN``, each with a tracker and an SMM, on one ``FakeNetwork``; the test plays the controller."""

    def __init__(self, cells: int = 3, network: Optional[FakeNetwork] = None,
                 settings: Optional[SmmSettings] = None,
                 timeouts: Optional[Timeouts] = None, auth: bool = False) -> None:  # fmt: skip
        self.network = network or FakeNetwork(random.Random(1))
        #: With ``auth`` every datagram is sealed (``prism.mgmt.auth``) under ``KEY``.
        self.controller_auth = MgmtAuth(KEY, CONTROLLER_SENDER) if auth else None
        if auth:
            self.network.controller_verifier = Verifier(KEY, max_age_s=1e12, max_skew_s=1e12)
        self.now = START
        self.cells: Dict[str, Cell] = {}
        self.smms: Dict[str, StateMirroringModule] = {}
        config = TrackerConfig(timeouts=timeouts) if timeouts else TrackerConfig()
        for index in range(1, cells + 1):
            cell_id = f"c{index}"
            cell = Cell(cell_id, ConnTracker(config, tokens=_tokens(index)))
            smm = StateMirroringModule(cell, self.network.transport(address_of(cell_id)), CONTROLLER,
                                       settings, random.Random(index),
                                       auth=MgmtAuth(KEY, cell_id) if auth else None)  # fmt: skip
            cell.add_tick_hook(smm.tick_hook)
            self.cells[cell_id], self.smms[cell_id] = cell, smm
            self.network.endpoints[address_of(cell_id)] = smm
        self.epoch = 0

    # -- the controller's side -----------------------------------------------------------
    def control(self, message: dict, cells: Optional[Iterable[str]] = None) -> None:
        """Deliver a control message (never lost: the tests are about replication)."""
        datagram = mgmt.encode(message)
        if self.controller_auth is not None:
            datagram = self.controller_auth.seal(datagram, self.now)
        for cell_id in cells or self.smms:
            self.smms[cell_id].on_datagram(datagram, CONTROLLER, self.now)

    def directory(self, live: Sequence[str], **extra) -> None:
        """A directory; ``extra``: its optional fields (``milestones_s``, ``state_interval_s`` ...)."""
        self.epoch += 1
        self.control({"type": "directory", "epoch": self.epoch,
                      "cells": {cell_id: list(address_of(cell_id)) for cell_id in self.smms},
                      "live": list(live), **extra})  # fmt: skip

    def profiles(self, table: Dict[int, Tuple[str, Sequence[str]]]) -> None:
        self.epoch += 1
        self.control({"type": "profiles", "epoch": self.epoch, "full": True,
                      "profiles": {str(pid): [primary, list(mirrors)]
                                   for pid, (primary, mirrors) in table.items()}})  # fmt: skip

    def assign(self, conversations: Sequence[Conversation], profile_id: int, mode: Optional[str] = None) -> None:
        """Assign the conversations to a profile (``mode``: the optional 4th element)."""
        flows = [[conv.syn().key.flow_id, profile_id, str(conv.syn().key)] for conv in conversations]
        if mode is not None:
            flows = [flow + [mode] for flow in flows]
        self.control({"type": "assign", "flows": flows})

    # -- traffic and time ----------------------------------------------------------------
    def send(self, frame: bytes, primary: str, mirrors: Sequence[str] = ()) -> bool:
        """One packet through a profile's group: mirror copies first, then the primary copy (forwarded?)."""
        for cell_id in mirrors:
            self.cells[cell_id].handle_frame(mirror_copy(frame), self.now)
        return self.cells[primary].handle_frame(frame, self.now)

    def send_state_mode(self, frame: bytes, primary: str, mirrors: Sequence[str] = ()) -> bool:
        """One packet as the switch sends a ``state`` flow's: copies to the mirrors only of SYN/FIN/RST."""
        flags = frame[14 + 20 + 13]  # IPv4 without options, TCP flags byte
        return self.send(frame, primary, mirrors if flags & 0x07 else ())

    def step(self) -> None:
        self.now += STEP
        for cell in self.cells.values():
            cell.tick(self.now)
        self.network.deliver(self.now)

    def run(self, seconds: float) -> None:
        for _ in range(int(round(seconds / STEP))):
            self.step()

    def run_until_quiet(self, max_seconds: float = 60.0) -> float:
        """Step until nothing is queued, in flight or held back; returns the simulated time it took."""
        start = self.now
        while self.now - start < max_seconds:
            self.step()
            busy = any(not channel.idle for smm in self.smms.values() for channel in smm.channels.values())
            if not busy and not self.network.queue and not self.network.held_back:
                return self.now - start
        raise AssertionError(f"replication still busy after {max_seconds} simulated seconds")

    def records(self, cell_id: str) -> Dict[int, dict]:
        return {record["flow_id"]: record for record in self.cells[cell_id].tracker.snapshot()}
