"""Measured flow distributions (AGH 2015, flow-models): loading the histograms and series, sampling them.

The files (``data/agh2015-flow-distributions``, see its ``SOURCE.md``) were
measured on 6,517,484 real flows, one hour (2015-06-10 19:00-20:00 UTC) of
NetFlow at the Internet edge of AGH University, Krakow (P. Jurkiewicz,
"flow-models 2.0", SoftwareX 24 (2023) 101506; MIT licence):

- ``histograms/{all,tcp,udp}/length.csv``: flows by length in packets,
  ``bin_lo,bin_hi,flows_sum,packets_sum,octets_sum`` with bins
  ``[bin_lo, bin_hi)`` (one bin per length up to 4096 packets, wider above);
- ``histograms/all/size.csv``: the same by size in octets (checks only);
- ``series/all/<day>.flows``: flows started in each second of the day.

Sampling is inverse-CDF over the bins (``LengthHistogram.sample``); a length
within a wider bin is uniform (bins are at most 512 packets wide there and the
measured mean within every bin is within 0.03% of the uniform mean).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np

#: The shipped copy (relative to the repository root).
DEFAULT_AGH_DIR = Path(__file__).resolve().parents[2] / "data" / "agh2015-flow-distributions"
HISTOGRAM_COLUMNS = ("bin_lo", "bin_hi", "flows_sum", "packets_sum", "octets_sum")
#: The day of the series file (days since the epoch): 2015-06-10.
SERIES_DAY = 16596
SECONDS_PER_DAY = 86400
PROTOCOL_CLASSES = ("tcp", "udp", "other")


class DistributionError(Exception):
    """Distribution files that are missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class LengthHistogram:
    """Flows by length: ``flows[i]`` flows of ``bin_lo[i] <= packets < bin_hi[i]``.

    Attributes:
        bin_lo: lower bin edges (packets or octets), int64.
        bin_hi: upper bin edges, exclusive.
        flows: flows per bin.
        packets: packets of those flows.
        octets: octets of those flows.
    """

    bin_lo: np.ndarray
    bin_hi: np.ndarray
    flows: np.ndarray
    packets: np.ndarray
    octets: np.ndarray

    @property
    def total_flows(self) -> float:
        """Flows in the histogram."""
        return float(self.flows.sum())

    @property
    def mean_packet_size(self) -> np.ndarray:
        """Measured mean packet size (octets) of each bin's flows."""
        return self.octets / np.maximum(self.packets, 1)

    def cdf(self) -> np.ndarray:
        """Share of flows in bins ``0..i`` (last value 1.0)."""
        cumulative = np.cumsum(self.flows, dtype=float)
        return cumulative / cumulative[-1]

    def share_below(self, value: float) -> float:
        """Share of flows whose length (or size) is below ``value`` (a bin edge)."""
        return float(self.flows[self.bin_hi <= value].sum() / self.total_flows)

    def cdf_at(self, value) -> np.ndarray:
        """Share of flows below ``value`` (array-like), linear within a bin."""
        before = np.r_[0.0, self.cdf()[:-1]]
        edges = np.column_stack([self.bin_lo, self.bin_hi]).ravel().astype(np.float64)
        shares = np.column_stack([before, self.cdf()]).ravel()
        return np.interp(np.asarray(value, dtype=np.float64), edges, shares)

    def quantile(self, share: np.ndarray) -> np.ndarray:
        """Inverse of ``cdf_at``: the value (int64) below which ``share`` of the flows are."""
        cdf = self.cdf()
        bins = np.minimum(np.searchsorted(cdf, share, side="right"), len(cdf) - 1)
        before = np.where(bins > 0, cdf[np.maximum(bins - 1, 0)], 0.0)
        within = np.clip((share - before) / np.maximum(cdf[bins] - before, 1e-300), 0.0, 1.0)
        width = self.bin_hi[bins] - self.bin_lo[bins]
        return self.bin_lo[bins] + np.minimum(np.floor(within * width), width - 1).astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` lengths: a bin by inverse CDF, then uniformly within it.

        Returns:
            ``(values, bins)``: int64 lengths and the index of each one's bin.
        """
        bins = np.searchsorted(self.cdf(), rng.random(n), side="right")
        bins = np.minimum(bins, len(self.flows) - 1)
        width = self.bin_hi[bins] - self.bin_lo[bins]
        values = self.bin_lo[bins] + np.floor(rng.random(n) * width).astype(np.int64)
        return values, bins


@dataclass(frozen=True)
class FlowDistributions:
    """Everything a generated population is drawn from.

    Attributes:
        length: length histogram per protocol class (``PROTOCOL_CLASSES``;
            ``other`` uses the all-traffic histogram).
        size: all-traffic size histogram (octets), for checks.
        protocol_shares: share of flows per protocol class.
        arrivals: flows started per second over the measured hour.
        first_second: time (s since the epoch) of ``arrivals[0]``.
        source: the directory read.
    """

    length: dict
    size: LengthHistogram
    protocol_shares: Tuple[float, float, float]
    arrivals: np.ndarray
    first_second: float
    source: str


def read_histogram(path: Path) -> LengthHistogram:
    """Read one ``bin_lo,bin_hi,flows_sum,packets_sum,octets_sum`` file.

    Raises:
        DistributionError: missing file, wrong header, or no flows.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().strip().split(",")
            with warnings.catch_warnings():  # an empty file is reported below, not warned about
                warnings.simplefilter("ignore", UserWarning)
                table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise DistributionError(f"{path}: no such histogram file (copy it from the flow-models "
                                f"agh_2015061019_IPv4_anon data, see data/README.md)") from None  # fmt: skip
    except ValueError as exc:
        raise DistributionError(f"{path}: not a numeric histogram ({exc})") from None
    if tuple(header) != HISTOGRAM_COLUMNS:
        raise DistributionError(f"{path}: header {','.join(header)!r}, expected {','.join(HISTOGRAM_COLUMNS)}")
    if table.size == 0 or table[:, 2].sum() <= 0:
        raise DistributionError(f"{path}: the histogram has no flows")
    lo, hi = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
    if np.any(hi <= lo):
        raise DistributionError(f"{path}: a bin whose bin_hi is not above its bin_lo")
    return LengthHistogram(lo, hi, table[:, 2], table[:, 3], table[:, 4])


def read_series(path: Path) -> Tuple[np.ndarray, float]:
    """Per-second flow counts of a day, trimmed to the measured seconds.

    Returns:
        ``(counts, first_second)``: counts from the first to the last non-zero
        second, and that first second as seconds since the epoch.

    Raises:
        DistributionError: missing file or no flows.
    """
    try:
        counts = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except FileNotFoundError:
        raise DistributionError(f"{path}: no such series file") from None
    except ValueError as exc:
        raise DistributionError(f"{path}: not a per-second series ({exc})") from None
    nonzero = np.flatnonzero(counts > 0)
    if not len(nonzero):
        raise DistributionError(f"{path}: the series has no flows")
    day = int(path.name.split(".")[0]) if path.name.split(".")[0].isdigit() else SERIES_DAY
    first = int(nonzero[0])
    return counts[first : int(nonzero[-1]) + 1], float(day * SECONDS_PER_DAY + first)


def load_distributions(directory=DEFAULT_AGH_DIR) -> FlowDistributions:
    """Read the histograms and the arrival series of an AGH 2015 directory.

    Raises:
        DistributionError: a file is missing or malformed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DistributionError(f"{directory}: no such distribution directory")
    histograms = directory / "histograms"
    length = {
        "tcp": read_histogram(histograms / "tcp" / "length.csv"),
        "udp": read_histogram(histograms / "udp" / "length.csv"),
        "other": read_histogram(histograms / "all" / "length.csv"),
    }
    total = length["other"].total_flows
    tcp, udp = length["tcp"].total_flows / total, length["udp"].total_flows / total
    series = sorted((directory / "series" / "all").glob("*.flows"))
    if not series:
        raise DistributionError(f"{directory}/series/all: no *.flows series file")
    arrivals, first_second = read_series(series[0])
    return FlowDistributions(
        length=length,
        size=read_histogram(histograms / "all" / "size.csv"),
        protocol_shares=(tcp, udp, max(0.0, 1.0 - tcp - udp)),
        arrivals=arrivals,
        first_second=first_second,
        source=str(directory),
    )
