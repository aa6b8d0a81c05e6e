"""Planning the repair of one profile group: its new profile when its cells die, drain or return.

How a group is repaired (:func:`plan_repair`):

1. A dead primary is replaced by the first live mirror that holds the state
   (seeded), else by a mirror still being seeded, else by the ring's choice
   among live cells: then the flows' state is lost (counted).
2. Dead mirrors are dropped; missing mirrors (down to the group's target
   replication factor) are chosen with the shared ring, keyed on the profile
   so that the profiles of one dead cell spread evenly over the others. A new
   mirror is installed at once (it gets the mirror copies from then on) but is
   only counted as a replica once the primary reports ``seeded`` for it.
3. A draining cell is replaced first and removed after: a draining mirror
   leaves once its replacement is seeded; a draining primary gets one extra
   mirror, and once that is seeded the first seeded mirror takes over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Collection, List, Optional, Tuple

from prism.director.groups import GroupState
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

PROFILE_KEY_PERSON = b"prism-profile"


@dataclass(frozen=True)
class Repair:
    """What one group becomes.

    Attributes:
        profile: Its new profile (may equal the old one).
        pending: Mirrors of the new profile still waiting for their snapshot.
        added: Mirrors chosen by this repair.
        state_lost: The new primary does not hold the flows' state.
    """

    profile: MirroringProfile
    pending: Tuple[str, ...]
    added: Tuple[str, ...]
    state_lost: bool


def profile_key(profile: MirroringProfile) -> int:
    """A stable 64-bit key of a profile for the ring (hashlib over its cells, in order)."""
    text = "\x1f".join(profile.cells).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, person=PROFILE_KEY_PERSON).digest(), "big")


def needs_repair(group: GroupState, down: Collection[str], draining: Collection[str]) -> bool:
    """True if the group names a dead or draining cell, or has fewer mirrors than its target."""
    cells = group.profile.cells
    return (
        any(c in down or c in draining for c in cells)
        or group.profile.replication_factor < group.target_rf
    )


def plan_repair(
    profile: MirroringProfile,
    target_rf: int,
    pending: Collection[str],
    down: Collection[str],
    draining: Collection[str],
    ring: HashRing,
) -> Optional[Repair]:
    """The repaired profile of one group (see the module docstring).

    Args:
        profile: Its current profile.
        target_rf: Mirrors it should have.
        pending: Its mirrors not yet seeded.
        down: Dead cells.
        draining: Cells being drained.
        ring: The shared consistent-hash ring over the switch's cells.

    Returns:
        The repair, or None if no live cell can take the profile's flows.
    """
    key = profile_key(profile)
    waiting = set(pending)
    primary = profile.primary_cell
    mirrors = [m for m in profile.mirror_cells if m not in down]
    state_lost = False
    if primary in down:
        seeded = [m for m in mirrors if m not in waiting]
        successors = (
            [m for m in seeded if m not in draining]
            + [m for m in seeded if m in draining]
            + [m for m in mirrors if m in waiting]
        )
        if successors:
            primary = successors[0]
            state_lost = primary in waiting
        else:
            choice = ring.order(key, 1, exclude=set(down) | set(draining)) or ring.order(key, 1, exclude=down)
            if not choice:
                return None
            primary, state_lost = choice[0], True
        mirrors = [m for m in mirrors if m != primary]
    if state_lost:
        waiting = set()  # the new primary starts empty: every mirror is as complete as it is
    waiting &= set(mirrors)
    good = [m for m in mirrors if m not in draining]
    wanted = target_rf + (1 if primary in draining else 0)
    added: List[str] = []
    if len(good) < wanted:
        exclude = set(down) | set(draining) | {primary, *mirrors}
        added = ring.order(key, wanted - len(good), exclude=exclude)
        mirrors += added
        if not state_lost:
            waiting |= set(added)
    if not waiting:
        if primary in draining:
            successors = [m for m in mirrors if m not in draining]
            if successors:
                primary = successors[0]
                mirrors.remove(primary)
        mirrors = [m for m in mirrors if m not in draining]
    mirrors.sort(key=lambda m: 2 if m in waiting else 1 if m in draining else 0)
    return Repair(
        MirroringProfile.of(primary, *mirrors),
        tuple(m for m in mirrors if m in waiting),
        tuple(added),
        state_lost,
    )
