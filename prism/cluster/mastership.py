"""Which controller is master of which switch, decided from leases that every controller renews in etcd.

Several controllers share one network (``etcd:`` section of the configuration).
Each renews a lease key in etcd every ``renew_s`` and writes, as its value,
the switches it is connected to. A controller counts as live while the
revision of its key keeps changing: once it has not changed for ``lease_s``
on the observer's own clock, the controller is dead (a killed controller
stops renewing at once; etcd's own lease, whole seconds and checked every
half second, is only the backstop that removes its key).

Switches are spread over the live controllers connected to them by the same
rendezvous hashing that places flows on cells (``prism.placement.ring``), seeded by the
switch's dpid, with a bound on each controller's share (:func:`assign_masters`):
with few switches per controller plain hashing leaves some controller idle.
The master of a switch is the one chosen; every other controller is its slave.

Nothing here talks to etcd or a switch, and time comes in as ``now``
(``ryu_apps.cluster`` does the talking). A controller that cannot reach etcd
is not told anything new and keeps the roles it has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from prism.placement.ring import HashRing

ROLE_MASTER = "master"
ROLE_SLAVE = "slave"
#: Default lease: a controller silent this long (observed) is dead, and a standby takes over.
DEFAULT_LEASE_S = 0.75
#: Renewals per lease: a live controller's key changes at least this many times per lease.
RENEWALS_PER_LEASE = 8
SWITCH_SEED_PERSON = b"prism-switch"


def switch_key(dp_id: int) -> int:
    """A switch's 64-bit place on the controllers' ring (blake2b of its dpid: stable everywhere)."""
    digest = hashlib.blake2b(dp_id.to_bytes(8, "big"), digest_size=8, person=SWITCH_SEED_PERSON).digest()
    return int.from_bytes(digest, "big")


def master_of(dp_id: int, candidates: Iterable[str]) -> Optional[str]:
    """The controller among ``candidates`` that should be master of ``dp_id`` (None if none)."""
    candidates = sorted(set(candidates))
    if not candidates:
        return None
    return HashRing(candidates).primary(switch_key(dp_id))


def assign_masters(candidates: Mapping[int, Iterable[str]]) -> Dict[int, Optional[str]]:
    """A master per switch from its candidates: rendezvous order, with bounded load.

    Plain rendezvous hashing leaves a controller idle now and then when there
    are few switches per controller (3 switches over 3 controllers: all three
    on different controllers only 2 times in 9). So each controller takes at
    most ``ceil(switches / controllers)``: switches, in the order of their ring
    key, get the first controller of their own order that has room. Every
    controller computes the same answer from the same etcd read.
    """
    everyone = sorted({c for cs in candidates.values() for c in cs})
    if not everyone:
        return {dp_id: None for dp_id in candidates}
    capacity = -(-len(candidates) // len(everyone))
    load: Dict[str, int] = {c: 0 for c in everyone}
    masters: Dict[int, Optional[str]] = {}
    for dp_id in sorted(candidates, key=switch_key):
        ranked = HashRing(sorted(set(candidates[dp_id]))).order(switch_key(dp_id)) if candidates[dp_id] else []
        chosen = next((c for c in ranked if load[c] < capacity), ranked[0] if ranked else None)
        if chosen is not None:
            load[chosen] += 1
        masters[dp_id] = chosen
    return masters


@dataclass(frozen=True)
class Beat:
    """One controller's lease key as read from etcd.

    Attributes:
        revision: The key's modification revision (changes at every renewal).
        switches: dpids the controller says it is connected to.
    """

    revision: int
    switches: FrozenSet[int] = frozenset()


@dataclass(frozen=True)
class RoleChange:
    """This controller should take ``role`` for switch ``dp_id`` (as master: claim it first)."""

    dp_id: int
    role: str


class Membership:
    """Live controllers, from their lease keys' revisions and when this observer saw them change.

    Args:
        lease_s: A controller whose key has not changed for this long is dead.
    """

    def __init__(self, lease_s: float = DEFAULT_LEASE_S) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, not {lease_s}")
        self.lease_s = float(lease_s)
        self._beats: Dict[str, Beat] = {}
        self._changed_at: Dict[str, float] = {}

    def observe(self, now: float, beats: Mapping[str, Beat]) -> None:
        """What etcd holds now: controller id -> its beat (a missing key: the controller is gone)."""
        for controller_id in list(self._beats):
            if controller_id not in beats:
                del self._beats[controller_id]
                del self._changed_at[controller_id]
        for controller_id, beat in beats.items():
            previous = self._beats.get(controller_id)
            if previous is None or previous.revision != beat.revision:
                self._changed_at[controller_id] = now
            self._beats[controller_id] = beat

    def live(self, now: float) -> Dict[str, Beat]:
        """Controllers seen renewing within the lease, with their last beat."""
        return {
            controller_id: beat
            for controller_id, beat in self._beats.items()
            if now - self._changed_at[controller_id] < self.lease_s
        }


class Mastership:
    """This controller's role per switch, and the changes to make when the live set changes.

    Args:
        controller_id: This controller's id (unique in the cluster).
        dp_ids: The switches of the configuration.
        lease_s: See :class:`Membership`.
    """

    def __init__(self, controller_id: str, dp_ids: Iterable[int], lease_s: float = DEFAULT_LEASE_S) -> None:
        if not controller_id:
            raise ValueError("controller_id must not be empty")
        self.controller_id = controller_id
        self.dp_ids: Tuple[int, ...] = tuple(sorted(set(dp_ids)))
        self.membership = Membership(lease_s)
        self._roles: Dict[int, str] = {}
        self._pending: Dict[int, Tuple[str, float]] = {}  # dp_id -> (role asked, when)
        self._renewed_at: Optional[float] = None

    @property
    def lease_s(self) -> float:
        return self.membership.lease_s

    @property
    def renew_s(self) -> float:
        """How often to renew (and read the others' keys)."""
        return self.lease_s / RENEWALS_PER_LEASE

    def role(self, dp_id: int) -> Optional[str]:
        """The role last decided for ``dp_id`` (None: not decided yet)."""
        return self._roles.get(dp_id)

    def is_master(self, dp_id: int) -> bool:
        return self._roles.get(dp_id) == ROLE_MASTER

    @property
    def roles(self) -> Mapping[int, str]:
        return dict(self._roles)

    def renewed(self, now: float) -> None:
        """This controller's own renewal reached etcd at ``now``."""
        self._renewed_at = now

    def holds_lease(self, now: float) -> bool:
        """Whether this controller's own last renewal is within the lease."""
        return self._renewed_at is not None and now - self._renewed_at < self.lease_s

    def desired_masters(self, now: float) -> Dict[int, Optional[str]]:
        """For every switch, the live controller connected to it that should be its master."""
        live = self.membership.live(now)
        return assign_masters(
            {dp_id: [c for c, beat in live.items() if dp_id in beat.switches] for dp_id in self.dp_ids}
        )

    def decide(self, now: float, beats: Mapping[str, Beat], connected: Iterable[int]) -> List[RoleChange]:
        """Take in what etcd holds; the role changes this controller must make, by dpid.

        Args:
            now: Current time (the observer's clock).
            beats: Every controller's lease key read from etcd now (this one's included).
            connected: Switches this controller has an OpenFlow connection to.

        Returns:
            A change for every connected switch whose role differs from the one held
            and is not already asked for (a request unanswered for a lease is asked
            again); none while this controller's own lease is not renewed (it claims nothing).
        """
        self.membership.observe(now, beats)
        connected = set(connected)
        for dp_id in list(self._roles):
            if dp_id not in connected:  # a switch that comes back starts undecided
                del self._roles[dp_id]
        for dp_id in list(self._pending):
            if dp_id not in connected:
                del self._pending[dp_id]
        if not self.holds_lease(now):
            return []
        changes = []
        for dp_id, master in self.desired_masters(now).items():
            if dp_id not in connected:
                continue
            role = ROLE_MASTER if master == self.controller_id else ROLE_SLAVE
            if self._roles.get(dp_id) == role:
                self._pending.pop(dp_id, None)
                continue
            asked = self._pending.get(dp_id)
            if asked is not None and asked[0] == role and now - asked[1] < self.lease_s:
                continue
            self._pending[dp_id] = (role, now)
            changes.append(RoleChange(dp_id, role))
        return changes

    def set_role(self, dp_id: int, role: str) -> None:
        """Record that ``dp_id`` now has this controller as ``role`` (the switch confirmed it)."""
        if role not in (ROLE_MASTER, ROLE_SLAVE):
            raise ValueError(f"unknown role {role!r}")
        self._roles[dp_id] = role
        if self._pending.get(dp_id, (None,))[0] == role:
            del self._pending[dp_id]

    def forget(self, dp_id: int) -> None:
        """The switch disconnected: its role is undecided again."""
        self._roles.pop(dp_id, None)
        self._pending.pop(dp_id, None)
