"""The mirroring budget: a score threshold re-fitted online so that mirror copies per packet track the budget.

A threshold fitted on training data does not spend the same budget on other
traffic (README, "Prediction"), so the line is re-fitted on the network's own
flows, from two windows:

- the scores of the last ``start_window`` new flows, counted per score bin
  (``BINS_PER_OCTAVE`` bins per doubling of 1 + score), known the moment a flow
  starts, so a burst of high-scored flows raises the line at once;
- the packets of the last ``end_window`` ended flows per score bin (from the
  switch's flow-removed reports), which say how many packets a flow of that
  score carries, and the mirrors they had (copies per mirrored packet).

The fit asks what the evaluation's ranked policy asks
(``models.evaluation.ranked_policy``): had the recent flows been mirrored best
bin first until ``budget`` copies per packet were spent, where would the line
have been? The answer is a bin and a share: flows of higher bins are mirrored,
flows of that bin with probability ``share``, decided by the flow_id (a
uniform hash), so a flow's decision is stable and needs no random source.

Flows the policy mirrors regardless of the line (``observe(...,
outside_line=True)``: the predictive policy's cheap long-lived flows) count
like any other in both windows, and the copies they cost are taken off the
budget before the line is placed, so mirror copies per packet still track the
budget (unless those flows alone spend more: then nothing else is mirrored).

Until ``min_flows`` flows have ended, the threshold calibrated on training data
(the model's manifest) is used as it is.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Tuple

FLOW_ID_SPACE = float(2**64)
BINS_PER_OCTAVE = 4
DEFAULT_START_WINDOW = 2048
DEFAULT_END_WINDOW = 4096
DEFAULT_MIN_FLOWS = 64
DEFAULT_REFIT_EVERY = 16
#: A flow predicted to outlive the horizon with at most this many packets (both directions)
#: is mirrored regardless of the line: it costs next to nothing (``prism.policy.predictive``).
DEFAULT_CHEAP_FLOW_PACKETS = 64
#: At most this share of the mirroring budget goes to cheap long-lived flows
#: mirrored below the line; the rest stays with the line's ranking.
CHEAP_FLOWS_BUDGET_SHARE = 0.5


def score_bin(score: float) -> int:
    """The bin of a score (>= 0): ``BINS_PER_OCTAVE`` bins per doubling of ``1 + score``."""
    return int(math.log2(1.0 + max(score, 0.0)) * BINS_PER_OCTAVE)


def bin_floor(bin_index: int) -> float:
    """The smallest score in a bin."""
    return 2.0 ** (bin_index / BINS_PER_OCTAVE) - 1.0


@dataclass(frozen=True)
class BudgetSettings:
    """How the threshold follows the budget.

    Attributes:
        budget: Mirror copies per packet to spend (0.25: a quarter of the packets, once).
        start_window: New flows whose scores the fit counts.
        end_window: Ended flows whose packets per score bin the fit uses.
        min_flows: Ended flows needed before the first fit (the training threshold until then).
        refit_every: New or ended flows between two fits.
    """

    budget: float
    start_window: int = DEFAULT_START_WINDOW
    end_window: int = DEFAULT_END_WINDOW
    min_flows: int = DEFAULT_MIN_FLOWS
    refit_every: int = DEFAULT_REFIT_EVERY

    def __post_init__(self) -> None:
        if not self.budget > 0 or self.start_window < 1 or not 1 <= self.min_flows <= self.end_window:
            raise ValueError(f"invalid budget settings {self}: budget > 0, windows >= 1, "
                             "1 <= min_flows <= end_window")  # fmt: skip
        if self.refit_every < 1:
            raise ValueError(f"refit_every must be >= 1, not {self.refit_every}")


class BudgetTracker:
    """Decides which scores are mirrored, and re-fits that line on recent flows (see the module docstring).

    Args:
        settings: Budget and windows.
        initial_threshold: The score threshold before the first fit (None: mirror nothing yet).
    """

    def __init__(self, settings: BudgetSettings, initial_threshold: Optional[float]) -> None:
        self.settings = settings
        self._starts: Deque[int] = deque()
        self._start_counts: Dict[int, int] = {}
        self._ends: Deque[Tuple[int, int, int, bool]] = deque()
        self._end_packets: Dict[int, List[int]] = {}  # bin -> [flows, packets]
        self.reset(initial_threshold)

    def reset(self, initial_threshold: Optional[float]) -> None:
        """Forget both windows (a new model scores differently) and start from ``initial_threshold``."""
        self.initial_threshold = initial_threshold
        self._threshold = float("inf") if initial_threshold is None else float(initial_threshold)
        self._bin: Optional[int] = None  # the fitted line (None: use _threshold)
        self.share_at_threshold = 1.0
        # Scores from _above are mirrored, below _below not, in between with share_at_threshold.
        self._above = self._below = self._threshold
        self._new_starts: List[float] = []
        self.fits = 0
        self._starts.clear()
        self._start_counts.clear()
        self._new_starts.clear()
        self._ends.clear()
        self._end_packets.clear()
        self._copies = self._packets = self._mirrored_packets = self._outside_copies = 0
        self._since_fit = 0

    @property
    def fitted(self) -> bool:
        """True once the line was fitted on this network's flows."""
        return self._bin is not None

    @property
    def threshold(self) -> float:
        """The score from which flows are mirrored (in part at exactly this bin when fitted)."""
        return self._threshold if self._bin is None else bin_floor(self._bin)

    # --- decisions ----------------------------------------------------------------------
    def mirrors(self, score: float, flow_id: int) -> bool:
        """A new flow with this score starts: is it mirrored? (Counts it in the start window.)

        The packet-in path: no logarithm here, the line is kept as the score range of its bin.
        """
        self._new_starts.append(score)
        self._since_fit += 1
        if self._since_fit >= self.settings.refit_every and len(self._ends) >= self.settings.min_flows:
            self.fit()
        if score >= self._above:
            return True
        if score < self._below:
            return False
        return flow_id / FLOW_ID_SPACE < self.share_at_threshold

    def _count_starts(self) -> None:
        """Move the scores of flows started since the last fit into the start window, by bin."""
        starts, counts, limit = self._starts, self._start_counts, self.settings.start_window
        for score in self._new_starts:
            index = score_bin(score)
            starts.append(index)
            counts[index] = counts.get(index, 0) + 1
            if len(starts) > limit:
                old = starts.popleft()
                counts[old] -= 1
                if not counts[old]:
                    del counts[old]
        self._new_starts.clear()

    # --- outcomes -----------------------------------------------------------------------
    def observe(self, score: float, packets: int, replication_factor: int, outside_line: bool = False) -> None:
        """A flow ended: its first-packet score, its packets and the mirrors it had.

        Args:
            score: Its score when it started.
            packets: Its packets (both directions).
            replication_factor: The mirrors it had.
            outside_line: It was mirrored regardless of the line (its copies are taken off the budget).
        """
        index, packets = score_bin(score), max(int(packets), 1)
        end = (index, packets, int(replication_factor), bool(outside_line))
        self._add_end(*end, +1)
        self._ends.append(end)
        if len(self._ends) > self.settings.end_window:
            self._add_end(*self._ends.popleft(), -1)
        self._tick()

    def _add_end(self, index: int, packets: int, replication_factor: int, outside_line: bool, sign: int) -> None:
        entry = self._end_packets.setdefault(index, [0, 0])
        entry[0] += sign
        entry[1] += sign * packets
        if not entry[0]:
            del self._end_packets[index]
        self._packets += sign * packets
        self._copies += sign * packets * replication_factor
        if replication_factor:
            self._mirrored_packets += sign * packets
        if outside_line:
            self._outside_copies += sign * packets * replication_factor

    def _tick(self) -> None:
        self._since_fit += 1
        if self._since_fit >= self.settings.refit_every and len(self._ends) >= self.settings.min_flows:
            self.fit()

    # --- the fit ------------------------------------------------------------------------
    def packets_per_flow(self, index: int) -> float:
        """Expected packets of a flow in score bin ``index``: its bin's mean, else the nearest bin's."""
        entry = self._end_packets.get(index)
        if entry is not None:
            return entry[1] / entry[0]
        nearest = min(self._end_packets, key=lambda other: (abs(other - index), -other))
        flows, packets = self._end_packets[nearest]
        return packets / flows

    def fit(self) -> None:
        """Re-fit the line (bin and share) on both windows."""
        self._since_fit = 0
        self._count_starts()
        if not self._end_packets or not self._start_counts:
            return
        copies_per_mirrored_packet = self._copies / self._mirrored_packets if self._mirrored_packets else 1.0
        expected = {index: count * self.packets_per_flow(index) for index, count in self._start_counts.items()}
        line_budget = max(self.settings.budget - self.outside_line_share(), 0.0)
        allowed = line_budget * sum(expected.values()) / max(copies_per_mirrored_packet, 1.0)
        spent = 0.0
        line, share = max(expected) + 1, 1.0
        for index in sorted(expected, reverse=True):
            block = expected[index]
            if spent + block <= allowed:
                spent += block
                line, share = index, 1.0
                continue
            if allowed > spent:
                line, share = index, (allowed - spent) / block
            break
        self._bin, self.share_at_threshold = line, share
        self._below, self._above = bin_floor(line), bin_floor(line + 1)
        if share >= 1.0:
            self._above = self._below
        self.fits += 1

    def outside_line_share(self) -> float:
        """Mirror copies per packet spent on flows mirrored regardless of the line (ended flows' window)."""
        return self._outside_copies / self._packets if self._packets else 0.0

    def realised_share(self) -> Optional[float]:
        """Mirror copies per packet over the ended flows' window (None before any flow ended)."""
        return self._copies / self._packets if self._packets else None

    def status(self) -> Dict[str, object]:
        """Plain values for the REST API and logs."""
        return {
            "budget": self.settings.budget,
            "threshold_s": None if math.isinf(self.threshold) else self.threshold,
            "share_at_threshold": self.share_at_threshold,
            "fitted_on_network": self.fitted,
            "fits": self.fits,
            "ended_flows_in_window": len(self._ends),
            "realised_share": self.realised_share(),
            "outside_line_share": self.outside_line_share(),
            "initial_threshold_s": self.initial_threshold,
        }
