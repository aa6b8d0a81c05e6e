"""The clock of a ryu-manager process (``prism.clock.AnchoredClock``: monotonic, on the wall clock's scale)."""

from __future__ import annotations

from prism.clock import AnchoredClock

#: The one clock of a ryu-manager process (the director, the REST API and the stats collector share it).
CLOCK = AnchoredClock()
