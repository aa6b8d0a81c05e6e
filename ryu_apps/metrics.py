"""Prometheus metrics of PRISM: a custom collector over the same figures the REST API shows."""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Per-switch counters exported as ``prism_<name>_total``: (director counter, help).
SWITCH_COUNTERS = (
    ("flows_total", "flows", "New flows installed in the FSC."),
    ("flows_mirrored", "flows_mirrored", "New flows with at least one mirror cell."),
    ("flows_ended", "flows_ended", "Flows whose FSC entries all expired."),
    ("flows_unprotected", "flows_unprotected",
     "Flows forwarded to their primary cell unmirrored (FSC copy full, or their group refused)."),
    ("flows_refused", "flows_refused", "Flows whose FSC entry the switch refused (e.g. a full flow table)."),
    ("flows_returned", "flows_returned",
     "Flows that came back (after an idle-out, a reconnect or a restart) placed on the cells holding their state."),
    ("groups_refused", "groups_refused", "Profile groups the switch refused (e.g. a full group table)."),
    ("packet_ins", "packet_ins", "Packet-ins handled."),
    ("groups_installed", "groups_installed", "Profile groups created."),
    ("groups_deleted", "groups_deleted", "Profile groups deleted after their last flow ended."),
    ("failovers", "failovers", "Cells failed over (link or process)."),
    ("recoveries", "recoveries", "Dead cells back in service."),
    ("drains", "drains", "Cells drained by an administrator."),
    ("groups_rewritten", "groups_rewritten", "Profile groups rewritten in place (2 OpenFlow messages each)."),
    ("state_lost_flows", "state_lost_flows", "Flows moved to a cell that did not hold their state."),
    ("seeds_sent", "seeds_sent", "Seed requests sent to primaries for new mirrors."),
    ("seeds_confirmed", "seeds_confirmed", "New mirrors confirmed seeded."),
    ("seeds_retried", "seeds_retried", "Seed requests sent again after no answer."),
    ("flows_state_mode", "flows_state_mode", "New mirrored flows in state mode (only SYN/FIN/RST copied)."),
    ("milestones", "milestones", "Flows reported crossing an age milestone."),
    ("redecisions", "redecisions", "Live flows re-decided by the policy at a milestone."),
    ("promotions", "promotions", "Live flows given more mirrors at a milestone."),
    ("demotions", "demotions", "Live flows given fewer mirrors at a milestone."),
    ("mode_changes", "mode_changes", "Live flows moved between full and state mode."),
    ("flow_seeds_sent", "flow_seeds_sent", "Per-flow seed requests sent to primaries (promotions)."),
    ("flows_seeded", "flows_seeded", "Promoted flows confirmed held by their new mirrors."),
)
SWITCH_GAUGES = (
    ("flows_active", "flows_active", "Flows in the controller's FSC copy."),
    ("groups_active", "groups_active", "Profile groups installed."),
)
LAST_FAILOVER_FIELDS = ("profiles_affected", "groups_rewritten", "flows_affected", "ofmsgs", "state_lost_flows")


class PrismCollector:
    """Collects from a MirroringDirectorApp at scrape time.

    Args:
        app: The running ``MirroringDirectorApp`` (its ``control`` and ``handler_errors``).
        now: Scrape time (default: the clock).
    """

    def __init__(self, app, now: float = None) -> None:
        self.app = app
        clock = getattr(app, "clock", None)
        self.now = (clock.now() if clock is not None else time.time()) if now is None else now

    def collect(self) -> Iterator[Metric]:
        """Every PRISM metric family."""
        control = self.app.control
        status = control.status(self.now)
        yield from self._switch_metrics(status["switches"])
        yield from self._cell_metrics(control.cells(self.now))
        mgmt = CounterMetricFamily("prism_mgmt_messages", "Management messages handled, by kind.", labels=["kind"])
        for kind, value in sorted(status["mgmt"].items()):
            mgmt.add_metric([kind], value)
        yield mgmt
        refused = CounterMetricFamily("prism_mgmt_refused", "Management datagrams refused, by reason "
                                      "(bad_tag: forged; replayed; stale; oversized ...).", labels=["reason"])  # fmt: skip
        channel = getattr(self.app, "channel", None)
        for name, value in sorted((channel.auth_counts() if channel is not None else {}).items()):
            if name.startswith("refused_"):
                refused.add_metric([name[len("refused_"):]], value)
        yield refused
        switch_errors = CounterMetricFamily("prism_switch_errors", "OpenFlow error messages from switches.",
                                            labels=["type", "code"])  # fmt: skip
        for (kind, code), value in sorted(getattr(self.app, "switch_errors", {}).items()):
            switch_errors.add_metric([str(kind), str(code)], value)
        yield switch_errors
        errors = CounterMetricFamily("prism_handler_errors", "Exceptions caught per handler.", labels=["handler"])
        for handler, value in sorted(self.app.handler_errors.items()):
            errors.add_metric([handler], value)
        yield errors
        stalls = CounterMetricFamily("prism_controller_stalls", "Ticks that came much later than due.")
        stalls.add_metric([], getattr(self.app, "stalls", 0))
        yield stalls
        longest = GaugeMetricFamily("prism_controller_longest_stall_seconds", "The longest controller stall seen.")
        longest.add_metric([], getattr(self.app, "longest_stall_s", 0.0))
        yield longest

    @staticmethod
    def _switch_metrics(switches) -> Iterator[Metric]:
        for key, name, doc in SWITCH_COUNTERS:
            family = CounterMetricFamily(f"prism_{name}", doc, labels=["dp_id"])
            for dp_id, figures in sorted(switches.items()):
                family.add_metric([dp_id], figures.get(key, 0))
            yield family
        for key, name, doc in SWITCH_GAUGES:
            family = GaugeMetricFamily(f"prism_{name}", doc, labels=["dp_id"])
            for dp_id, figures in sorted(switches.items()):
                family.add_metric([dp_id], figures.get(key, 0))
            yield family
        drops = CounterMetricFamily("prism_drops", "Packet-ins dropped, by reason.", labels=["dp_id", "reason"])
        for dp_id, figures in sorted(switches.items()):
            for reason, value in sorted(figures["drop_reasons"].items()):
                drops.add_metric([dp_id, reason], value)
        yield drops
        for field in LAST_FAILOVER_FIELDS:
            family = GaugeMetricFamily(
                f"prism_last_failover_{field}", f"The latest failover's {field.replace('_', ' ')}.", labels=["dp_id"]
            )
            for dp_id, figures in sorted(switches.items()):
                if figures["last_failover"]:
                    family.add_metric([dp_id], figures["last_failover"][field])
            yield family

    @staticmethod
    def _cell_metrics(cells) -> Iterator[Metric]:
        alive = GaugeMetricFamily("prism_cell_alive", "1 if the cell is healthy (link up, heartbeats fresh).",
                                  labels=["cell"])  # fmt: skip
        link = GaugeMetricFamily("prism_cell_link_up", "1 if the cell's switch port is up.", labels=["cell"])
        draining = GaugeMetricFamily("prism_cell_draining", "1 if the cell is drained.", labels=["cell"])
        live = GaugeMetricFamily("prism_cell_port_live",
                                 "1 if the switch holds the cell's port LIVE (BFD up, not withdrawn).",
                                 labels=["cell"])  # fmt: skip
        withdrawn = GaugeMetricFamily("prism_cell_path_down",
                                      "1 while the cell asks the switch to stop using it, by reason.",
                                      labels=["cell", "reason"])  # fmt: skip
        failures = CounterMetricFamily("prism_cell_failures", "Failures of the cell.", labels=["cell"])
        risk = GaugeMetricFamily("prism_cell_failure_probability",
                                 "Probability of a failure within the horizon (Gamma-Poisson posterior).",
                                 labels=["cell", "horizon_s"])  # fmt: skip
        flows = GaugeMetricFamily("prism_cell_flows", "Flows naming the cell, by role.", labels=["cell", "role"])
        age = GaugeMetricFamily("prism_cell_heartbeat_age_seconds", "Seconds since the cell's last heartbeat.",
                                labels=["cell"])  # fmt: skip
        for cell in cells:
            cell_id = cell["id"]
            alive.add_metric([cell_id], 1 if cell["state"] == "alive" else 0)
            link.add_metric([cell_id], 1 if cell["link_up"] else 0)
            draining.add_metric([cell_id], 1 if cell["draining"] else 0)
            if cell.get("port_live") is not None:
                live.add_metric([cell_id], 1 if cell["port_live"] else 0)
            if cell.get("path_down"):
                withdrawn.add_metric([cell_id, str(cell["path_down"])], 1)
            failures.add_metric([cell_id], cell["failures"])
            risk.add_metric([cell_id, f"{cell['risk_horizon_s']:g}"], cell["failure_probability"])
            flows.add_metric([cell_id, "primary"], cell["flows_primary"])
            flows.add_metric([cell_id, "mirror"], cell["flows_mirror"])
            if cell["last_heartbeat_age_s"] is not None:
                age.add_metric([cell_id], cell["last_heartbeat_age_s"])
        yield from (alive, link, draining, live, withdrawn, failures, risk, flows, age)


def render_metrics(app, now: float = None) -> bytes:
    """The Prometheus text exposition of ``app``'s figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrismCollector(app, now))
    return generate_latest(registry)
