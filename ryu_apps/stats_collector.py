"""PRISM's stats collector as a Ryu app: switch statistics on a timer and ended flows, into Parquet telemetry.

Launch it beside the director (same ``PRISM_CONFIG``)::

    PRISM_CONFIG=examples/prism.yaml ryu-manager ryu_apps/mirroring_director.py ryu_apps/stats_collector.py

With a ``telemetry`` section in the configuration it writes, under
``telemetry.dir`` (schemas in ``prism/telemetry/rows.py``):

- ``flows/``: one flow record per ended flow, joined by the director
  (``EventFlowEnded``: first-packet features + the flow-removed counters of
  both directions), readable by ``prism train`` as it is;
- ``flow_stats/``, ``port_stats/``, ``group_stats/``: every switch's
  statistics, requested every ``telemetry.poll_interval`` seconds.

Files rotate by record count or age; each is written whole then renamed, and
the open parts are flushed when the app stops or ryu-manager gets SIGTERM.
The writes and their fsync run in a native thread behind a bounded queue
(``ryu_apps.telemetry_thread``), never on the event loop that the director
shares; rows that find the queue full are dropped and counted.
Without a ``telemetry`` section the app logs that and does nothing. Handlers
log and count their exceptions; the controller carries on.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Callable, Dict, List, Optional

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from prism.config.load import ConfigError, load_config
from prism.telemetry.rows import (
    TABLE_FLOW_STATS,
    TABLE_FLOWS,
    TABLE_GROUP_STATS,
    TABLE_PORT_STATS,
    RotationPolicy,
    flow_stats_row,
    group_stats_row,
    port_stats_row,
)
from prism.telemetry.files import TelemetryWriter
from ryu_apps.clock import CLOCK
from ryu_apps.telemetry_thread import TelemetryThread
from ryu_apps.ofmsg import match_to_dict
from ryu_apps.telemetry_events import EventFlowEnded

CONFIG_ENV = "PRISM_CONFIG"
#: Seconds between two checks of the poll timer and of the files' age.
TICK_S = 1.0


class StatsCollectorApp(app_manager.RyuApp):
    """Polls switch statistics and records ended flows (see the module docstring).

    Attributes:
        writer: The telemetry files (None without a ``telemetry`` section).
        datapaths: Connected switches by dp_id.
        counts: Requests sent, replies and rows received, flows recorded or skipped.
        handler_errors: Exceptions caught per handler.
    """

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise SystemExit(f"PRISM: set {CONFIG_ENV} to the configuration file (e.g. examples/prism.yaml)")
        try:
            config = load_config(path)
        except ConfigError as error:
            raise SystemExit(f"PRISM: {path} is not a valid configuration:\n{error}") from None
        self.telemetry = config.telemetry
        self.datapaths: Dict[int, object] = {}
        self.counts: Counter = Counter()
        self.handler_errors: Counter = Counter()
        self.writer: Optional[TelemetryWriter] = None
        self.writer_thread: Optional[TelemetryThread] = None
        self.clock = CLOCK
        self._next_poll = 0.0
        self._previous_sigterm = None
        if self.telemetry is None:
            self.logger.warning("no telemetry section in %s: the stats collector records nothing", path)
            return
        rotation = RotationPolicy(self.telemetry.rotate_records, self.telemetry.rotate_s)
        self.writer = TelemetryWriter(self.telemetry.dir, rotation, self.clock.now(), _writer_id(config))
        self.writer_thread = TelemetryThread(self.writer)
        self.logger.info("PRISM stats collector: telemetry to %s, polling every %g s",
                         self.telemetry.dir, self.telemetry.poll_interval)  # fmt: skip

    # --- Green thread and shutdown ------------------------------------------------------------
    def start(self):
        """Start the event loop, then the poll timer; flush the open files on SIGTERM."""
        thread = super().start()
        if self.writer is not None:
            self.threads.append(hub.spawn(self._timer_loop))
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return thread

    def stop(self):
        """Write the open parts, then stop."""
        self.flush(self.clock.now())
        super().stop()

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        """Write what is buffered, then die of SIGTERM as if nothing had been installed."""
        self.flush(self.clock.now())
        signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def flush(self, now: float) -> None:
        """Close every open part and end the writer thread (shutdown)."""
        if self.writer_thread is not None:
            self._guard("flush", lambda: self.writer_thread.close(now))

    def _timer_loop(self) -> None:
        while self.is_active:
            self.tick(self.clock.now())
            hub.sleep(min(TICK_S, self.telemetry.poll_interval))

    def tick(self, now: float) -> None:
        """Rotate files that are old enough; poll every switch when the poll interval has passed."""
        self._guard("rotate", lambda: self.writer_thread.tick(now))
        if now >= self._next_poll:
            self._next_poll = now + self.telemetry.poll_interval
            for datapath in list(self.datapaths.values()):
                if not self._polls(datapath.id):
                    continue
                self._guard("request", lambda d=datapath: self.request_stats(d))

    @staticmethod
    def _polls(dp_id: int) -> bool:
        """With several controllers (an ``etcd`` section), only a switch's master polls it: no row twice."""
        director = app_manager.lookup_service_brick("MirroringDirectorApp")
        cluster = getattr(director, "cluster", None)
        return cluster is None or cluster.may_send(dp_id)

    def request_stats(self, datapath) -> None:
        """Ask one switch for its flow (all tables), port and group statistics."""
        ofp, parser = datapath.ofproto, datapath.ofproto_parser
        datapath.send_msg(parser.OFPFlowStatsRequest(datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                                     0, 0, parser.OFPMatch()))  # fmt: skip
        datapath.send_msg(parser.OFPPortStatsRequest(datapath, 0, ofp.OFPP_ANY))
        datapath.send_msg(parser.OFPGroupStatsRequest(datapath, 0, ofp.OFPG_ALL))
        self.counts["requests"] += 3

    def _guard(self, handler: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # one bad reply must never take the controller down
            self.handler_errors[handler] += 1
            self.logger.exception("stats collector: %s failed", handler)

    def _add(self, table: str, rows: List, now: float) -> None:
        if self.writer_thread is None:
            return
        self.counts[f"{table}_rows"] += len(rows)
        if not self.writer_thread.add(table, rows, now):
            self.counts[f"{table}_rows_dropped"] += len(rows)

    # --- Events -------------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def state_change_handler(self, ev) -> None:
        """Track the switches to poll."""
        datapath = ev.datapath
        if datapath is None or datapath.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            self.datapaths[datapath.id] = datapath
        elif self.datapaths.get(datapath.id) is datapath:
            del self.datapaths[datapath.id]

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats_handler(self, ev) -> None:
        """Every flow entry's counters (one reply of a possibly multi-part answer)."""
        msg, now = ev.msg, self.clock.now()
        self._guard("flow_stats", lambda: self._add(
            TABLE_FLOW_STATS,
            [flow_stats_row(now, msg.datapath.id, stat, match_to_dict(stat.match)) for stat in msg.body], now))

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def port_stats_handler(self, ev) -> None:
        """Every port's counters."""
        msg, now = ev.msg, self.clock.now()
        self._guard("port_stats", lambda: self._add(
            TABLE_PORT_STATS, [port_stats_row(now, msg.datapath.id, stat) for stat in msg.body], now))

    @set_ev_cls(ofp_event.EventOFPGroupStatsReply, MAIN_DISPATCHER)
    def group_stats_handler(self, ev) -> None:
        """Every group's counters, with its buckets'."""
        msg, now = ev.msg, self.clock.now()
        self._guard("group_stats", lambda: self._add(
            TABLE_GROUP_STATS, [group_stats_row(now, msg.datapath.id, stat) for stat in msg.body], now))

    @set_ev_cls(EventFlowEnded)
    def flow_ended_handler(self, ev: EventFlowEnded) -> None:
        """A flow ended: its joined record (first packet + final counters) goes to ``flows/``."""
        if ev.record is None:
            self.counts["flows_without_counters"] += 1
            return
        self.counts["flows_recorded"] += 1
        self._guard("flow_ended", lambda: self._add(TABLE_FLOWS, [ev.record], ev.at))


def _writer_id(config) -> str:
    """With several controllers (an ``etcd`` section) this controller's id names its telemetry files, else nothing."""
    if config.etcd is None:
        return ""
    from ryu import cfg

    from ryu_apps.cluster import controller_id_from_env

    return controller_id_from_env(cfg.CONF.ofp_tcp_listen_port)
