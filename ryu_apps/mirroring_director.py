"""The Mirroring Director as a Ryu app: hands OpenFlow and management events to the core, sends what it decides.

Launch from the repository root, with the project's virtualenv active::

    PRISM_CONFIG=examples/prism.yaml ryu-manager ryu_apps/mirroring_director.py

(add ``ryu_apps/rest_api.py`` for the REST API and metrics, ``ryu_apps/stats_collector.py``
for telemetry).

``PRISM_CONFIG`` names the PRISM YAML configuration (``prism check-config FILE``
validates it); a missing or bad file stops ryu-manager at start with every
problem listed. Switches connect to ryu-manager's OpenFlow port (6653 by
default) and must speak OpenFlow 1.3; a switch whose dpid is not in the file
is logged and ignored.

With a ``prediction`` section in the configuration, every new flow's profile
comes from the predictive policy (``prism.policy.predictive``, the model
served by ``ryu_apps.prediction.ModelService``; ``reload_model`` swaps it
live); without one, from ``FixedPolicy``. A model that does not load stops
ryu-manager at start with the reason.

All decisions live in ``prism.director.core.MirroringDirector`` (one per switch)
and ``prism.control.plane.ControlPlane`` (cell health and failover across them);
this shell only turns events into their calls, their answers into OpenFlow
messages (``ryu_apps.ofmsg``) and management datagrams
(``ryu_apps.mgmt_channel``), and survives its own exceptions.

Two green threads are started in ``start()``: one receives management
datagrams (heartbeats, ``seeded``) on ``management.listen``, one ticks every
``TICK_S`` (failure detection, batched messages to cells). Port status
messages for cell ports are the link-failure input; with a ``bfd`` section
a cell port that is up but not LIVE is a cell the switch has stopped using
(its BFD session is down, or the cell asked to be left out).

Time: every ``now`` is ``ryu_apps.clock.CLOCK`` (monotonic). Each tick first
reads every management datagram waiting in the socket, each with the time
the kernel received it, and only then judges the cells: a controller that
was busy (a long REST request, a statistics reply, a file write) cannot
take its own silence for theirs.

With an ``etcd`` section several ryu-managers share the switches
(``ryu_apps/cluster.py``, docs/controllers.md): a third green thread holds
this controller's lease and roles, and only a switch's master programs it,
handles its packet-ins and talks to its cells. ``PRISM_CONTROLLER_ID`` names
the controller, ``PRISM_MGMT_LISTEN`` gives it its own management address.
"""

from __future__ import annotations

import os
import select
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    HANDSHAKE_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from prism.director.actions import MgmtMessage
from prism.config.load import ConfigError, PrismConfig, load_config
from prism.config.mgmt import parse_address
from prism.control.plane import ControlPlane, Outgoing, SwitchChange
from prism.director.core import MirroringDirector
from prism.director.flow_end import flow_removed, tell_policy
from prism.control.health import HealthSettings
from prism.openflow.changes import OfChange
from prism.placement.store import save_placements
from prism.policy.base import FixedPolicy
from prism.placement.ring import HashRing
from prism.openflow.refusals import refused_addition
from prism.telemetry.rows import flow_record
from ryu_apps.clock import CLOCK
from ryu_apps.cluster import Cluster, ClusterEvents, controller_id_from_env
from ryu_apps.listen import apply_listen_addresses
from ryu_apps.mgmt_channel import MAX_PENDING, RECEIVE_TIMEOUT_S, MgmtChannel
from ryu_apps.mgmt_setup import controller_generation, management_auth, placements_path, restore_placements
from ryu_apps.ofmsg import match_to_dict, to_ofmsg, to_ofmsgs
from ryu_apps.native import in_native_thread
from ryu_apps.telemetry_events import EventFlowEnded

#: Environment variable naming the PRISM configuration file.
CONFIG_ENV = "PRISM_CONFIG"
#: Environment variable overriding ``management.listen`` for this controller ("IP:PORT"): several
#: controllers sharing one configuration each listen on their own address (cells name them all).
MGMT_LISTEN_ENV = "PRISM_MGMT_LISTEN"
NANOSECONDS = 1e9
#: Seconds between two ticks of the control plane (failure detection, batched cell messages).
TICK_S = 0.05
#: Seconds between two attempts to bind the management address (it may appear after start).
BIND_RETRY_S = 1.0
#: Seconds the receive loop waits when the tick is handling the datagrams itself.
BUSY_RETRY_S = 0.002
#: Seconds between two saves of the flow placements (a restarted controller places returning flows by them).
PLACEMENT_SAVE_S = 5.0
#: The share of the event loop's time that reading the placements may take: a larger table is
#: saved less often (10^5 flows hold the loop about 50 ms; JSON and the write run in a native thread).
PLACEMENT_SAVE_SHARE = 0.02
#: Datagrams the management loop handles before it lets the other green threads run
#: (a green socket with data queued never yields: a flood would starve the tick and OpenFlow).
MGMT_DATAGRAMS_PER_TURN = 64
#: A tick this much later than due is a controller stall (counted and logged; verdicts stay exact).
STALL_LOG_S = 0.25


def load_directors(config: PrismConfig, logger, models=None) -> Dict[int, MirroringDirector]:
    """One director per configured switch, placing flows over its cells' ring.

    With ``models`` (a ``ryu_apps.prediction.ModelService``) the predictive policy, else a FixedPolicy.
    """
    directors = {}
    for dp_id, switch in config.switches.items():
        ring = HashRing(switch.cell_ids)
        if models is not None:
            policy = models.policy_for(switch, ring)
        else:
            policy = FixedPolicy(ring, config.default_replication_factor, config.mirroring_mode)
        directors[dp_id] = MirroringDirector(switch, config.idle_timeout, policy, logger=logger, ring=ring,
                                             max_flows=config.limits.max_flows)  # fmt: skip
    return directors


def load_models(config: PrismConfig):
    """The policy service of the ``prediction`` section, else None (SystemExit if its model cannot load).

    ``prediction.policy: aging`` (the default): ``AgingService`` (a model is optional);
    ``first_packet``: ``ModelService``.
    """
    if config.prediction is None:
        return None
    from ryu_apps.prediction import AgingService, ModelError, ModelService  # scikit-learn only when a model is used

    try:
        if getattr(config.prediction, "policy", "first_packet") == "aging":
            return AgingService(config)
        return ModelService(config)
    except ModelError as error:
        raise SystemExit(f"PRISM: the model {config.prediction.model} (prediction.model) cannot be used:\n"
                         f"{error}") from None


def health_settings(config: PrismConfig) -> HealthSettings:
    """The failure detector's timing from the ``management`` section."""
    management = config.management
    return HealthSettings(
        heartbeat_interval=management.heartbeat_interval,
        dead_after=management.dead_after,
        alive_after=management.alive_after,
    )


def cell_addresses(config: PrismConfig) -> Dict[str, tuple]:
    """Cell id -> management ``(host, port)`` for the cells that have one."""
    return {
        cell.id: cell.mgmt
        for switch in config.switches.values()
        for cell in switch.cells
        if cell.mgmt is not None
    }


class MirroringDirectorApp(ClusterEvents, app_manager.RyuApp):
    """Ryu shell of the Mirroring Director.

    Attributes:
        config: The loaded PRISM configuration.
        directors: dp_id -> MirroringDirector.
        control: Cell health and failover over every director.
        datapaths: Connected configured switches by dp_id.
        channel: The management channel once bound (None before).
        handler_errors: Exceptions caught per handler (the controller carries on).
        switch_errors: OpenFlow error messages received, by ``(type, code)``.
        ignored_switches: Events from switches not in the configuration, by dp_id.
        unsent: Changes and messages that had nowhere to go, by reason.
        cluster: With an ``etcd`` section, this controller's part in a shared network
            (``ryu_apps.cluster``): it decides which switches this controller programs.
        duplicate_connections: Connections refused because they claimed the dp_id of a
            switch whose connection is live (a second connection never takes a switch over), by dp_id.
    """

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    #: Raised when a flow ends, with its telemetry record (the stats collector observes it).
    _EVENTS = [EventFlowEnded]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise SystemExit(f"PRISM: set {CONFIG_ENV} to the configuration file (e.g. examples/prism.yaml)")
        try:
            self.config = load_config(path)
        except ConfigError as error:
            raise SystemExit(f"PRISM: {path} is not a valid configuration:\n{error}") from None
        for warning in self.config.warnings:
            self.logger.warning("%s", warning)
        apply_listen_addresses(self.config, self.logger)
        self.models = load_models(self.config)
        self.directors = load_directors(self.config, self.logger, self.models)
        self.clock = CLOCK
        management = self.config.management
        self.control = ControlPlane(
            self.directors, self.clock.now(), health_settings(self.config), cell_addresses(self.config),
            state_interval_s=getattr(management, "state_interval_s", None),
            takeover_tolerance_bytes=getattr(management, "takeover_tolerance_bytes", None),
            expect_heartbeats=management.listen is not None,
        )  # fmt: skip
        self.stalls = 0
        self.longest_stall_s = 0.0
        self._last_tick: Optional[float] = None
        self._last_drain: Optional[float] = None
        self._receiving = False
        if self.models is not None:
            self.models.attach_health(self.control.detector)
        self.datapaths: Dict[int, object] = {}
        self.channel: Optional[MgmtChannel] = None
        self.mgmt_auth = management_auth(self.config)
        alone = self.config.etcd is None
        # Fencing (issue 10): one controller counts its generations in its file; several take theirs
        # from etcd (the revision of their latest claim, raise_generation), so a new master always
        # stamps above the one it replaced. The placements file is one controller's too: with several,
        # a takeover reads the switch's tables and etcd instead.
        self.generation = controller_generation(self.config) if self.mgmt_auth is not None and alone else 0
        self.placements_file = placements_path(self.config) if self.mgmt_auth is not None and alone else None
        self.placement_save_interval_s = PLACEMENT_SAVE_S
        if self.placements_file is not None:
            restore_placements(self.directors, self.placements_file, self.logger)
        self.handler_errors: Counter = Counter()
        self.switch_errors: Counter = Counter()
        self.ignored_switches: Counter = Counter()
        self.unsent: Counter = Counter()
        self.duplicate_connections: Counter = Counter()
        self.mgmt_listen = self.config.management.listen
        if os.environ.get(MGMT_LISTEN_ENV):
            self.mgmt_listen = parse_address(os.environ[MGMT_LISTEN_ENV])
            if self.mgmt_listen is None:
                raise SystemExit(f"PRISM: {MGMT_LISTEN_ENV}={os.environ[MGMT_LISTEN_ENV]!r} is not IP:PORT")
        self.cluster: Optional[Cluster] = None
        if self.config.etcd is not None:
            from ryu import cfg

            self.cluster = Cluster(self, self.config.etcd, controller_id_from_env(cfg.CONF.ofp_tcp_listen_port))
            self.logger.info("controller %s of a cluster (etcd %s, lease %g s)", self.cluster.controller_id,
                             self.config.etcd.endpoints, self.config.etcd.lease_s)
        self.logger.info(
            "PRISM Mirroring Director: %d switch(es) from %s, idle_timeout %d s, replication factor %d",
            len(self.directors),
            path,
            self.config.idle_timeout,
            self.config.default_replication_factor,
        )
        if self.models is not None:
            self.logger.info("%s policy: model %s, budget %g mirror copies per packet",
                             self.config.prediction.policy, self.models.directory, self.config.prediction.budget)

    # --- Green threads ---------------------------------------------------------------------
    def start(self):
        """Start the event loop, then the management receiver and the tick."""
        thread = super().start()
        # raise_error: a Ctrl-C that lands in one of them reaches ryu-manager, which stops (Ryu's
        # default swallows it there and leaves the controller running without that loop)
        self.threads.append(hub.spawn(self._receive_loop, raise_error=True))
        self.threads.append(hub.spawn(self._tick_loop, raise_error=True))
        if self.cluster is not None:
            self.threads.append(hub.spawn(self.cluster.run, raise_error=True))
        if self.placements_file is not None:
            self.threads.append(hub.spawn(self._save_loop, raise_error=True))
        return thread

    def stop(self):
        """Stop the green threads (they notice within a receive timeout), then close the channel."""
        super().stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.channel is not None:
            self.channel.close()

    def _receive_loop(self) -> None:
        """Bind the management address (retrying until it exists), then feed datagrams to the core."""
        listen = self.mgmt_listen
        if listen is None:
            self.logger.warning("no management.listen in %s: no heartbeats, process failures go undetected",
                                CONFIG_ENV)
            return
        warned = False
        while self.is_active and self.channel is None:
            try:
                self.channel = MgmtChannel(listen, cell_addresses(self.config), self.mgmt_auth,
                                           self.generation)  # fmt: skip
                self.logger.info("management channel on %s:%d, generation %d",
                                 *self.channel.address, self.generation)  # fmt: skip
                self.control.start_listening(self.clock.now())  # never-heard cells: their clock starts
            except OSError as error:
                if not warned:
                    self.logger.warning("cannot bind management address %s:%d yet (%s); retrying",
                                        listen[0], listen[1], error)
                    warned = True
                hub.sleep(BIND_RETRY_S)
        while self.is_active:
            try:
                select.select([self.channel], [], [], RECEIVE_TIMEOUT_S)  # green under ryu-manager
            except (OSError, ValueError):
                if not self.is_active:
                    return
                self.handler_errors["mgmt_receive"] += 1
                self.logger.exception("management socket wait failed")
                hub.sleep(BIND_RETRY_S)
                continue
            if self.receive_pending(MGMT_DATAGRAMS_PER_TURN) is None:
                hub.sleep(BUSY_RETRY_S)
            else:
                hub.sleep(0)  # a flood keeps the socket readable: let the tick and OpenFlow run

    def receive_pending(self, limit: int = MAX_PENDING) -> Optional[int]:
        """Handle the management datagrams waiting now (``limit`` at most), each at the time the kernel received it.

        Returns:
            How many messages were handled; None if another green thread is handling them now.
        """
        if self.channel is None:
            return 0
        if self._receiving:
            # Handling a message can yield to the hub (sending to the switch or a cell): the other
            # green thread must not handle newer datagrams meanwhile, or a heartbeat seq would seem
            # to go back (a restarted process) when the older ones are handled after them.
            return None
        self._receiving = True
        try:
            try:
                received = self.channel.receive_pending(limit)
            except OSError:  # a socket in trouble: the next wait or tick tries again
                self.handler_errors["mgmt_receive"] += 1
                self.logger.exception("management receive failed")
                return 0
            now = self.clock.now()
            earliest = self._last_drain if self._last_drain is not None else now
            for message, sender, arrival in received:
                # the kernel's time, on our clock; never before the last time the queue was emptied
                at = now if arrival is None else min(now, max(earliest, self.clock.wall_to_clock(arrival)))
                self.handle_mgmt_message(message, sender, at)
            if getattr(self.channel, "drained", True):  # what comes later arrived after now (with a limit reached: not known)
                self._last_drain = now
            return len(received)
        finally:
            self._receiving = False

    def raise_generation(self, generation: int) -> None:
        """Stamp ``generation`` on ``directory`` and ``profiles`` from now on, if it is higher (a claim's revision)."""
        if generation > self.generation:
            self.generation = generation
            if self.channel is not None:
                self.channel.generation = generation

    def _save_loop(self) -> None:
        """Save every switch's flow placements every PLACEMENT_SAVE_S or more (errors are logged, counted, retried)."""
        while self.is_active:
            hub.sleep(self.placement_save_interval_s)
            self.save_placements()

    def save_placements(self) -> None:
        """Write the placements file now: read on the event loop, encoded and written in a native thread.

        The next save waits until reading took at most PLACEMENT_SAVE_SHARE of the loop's time.
        """
        now = self.clock.now()
        started = time.perf_counter()
        switches = {dp_id: d.placements(now) for dp_id, d in self.directors.items()}
        held = time.perf_counter() - started
        self.placement_save_interval_s = max(PLACEMENT_SAVE_S, held / PLACEMENT_SAVE_SHARE)
        try:
            in_native_thread(save_placements, self.placements_file, switches, now)
        except Exception:  # a full disk must not stop the controller
            self.handler_errors["save_placements"] += 1
            self.logger.exception("saving flow placements to %s failed", self.placements_file)

    def _tick_loop(self) -> None:
        while self.is_active:
            self.tick(self.clock.now())
            hub.sleep(TICK_S)

    def handle_mgmt_message(self, message: dict, sender: tuple, at: Optional[float] = None) -> None:
        """One decoded management message (heartbeat, seeded ...) from ``sender``, received ``at``."""
        at = self.clock.now() if at is None else at
        self._control("mgmt", lambda c: c.on_mgmt_message(message, sender, at))

    def tick(self, now: float) -> None:
        """One tick of the control plane: first what the cells sent meanwhile, then the verdicts."""
        if self._last_tick is not None:
            late = now - self._last_tick - TICK_S
            if late > STALL_LOG_S:
                self.stalls += 1
                self.longest_stall_s = max(self.longest_stall_s, late)
                self.logger.warning("controller stalled %.0f ms (tick due every %.0f ms)", late * 1000, TICK_S * 1000)
        self._last_tick = now
        self.receive_pending()
        self._control("tick", lambda c: c.tick(now))

    # --- Admin actions (the REST API) -------------------------------------------------------------
    def drain_cell(self, cell_id: str) -> None:
        """Drain a cell now and send what that takes (UnknownCell if it is not configured)."""
        self.send_outgoing(self.control.drain(cell_id, self.clock.now()))

    def restore_cell(self, cell_id: str) -> None:
        """Restore a drained cell now (UnknownCell if it is not configured)."""
        self.send_outgoing(self.control.restore(cell_id, self.clock.now()))

    def reload_model(self) -> Dict[str, Any]:
        """Load the configured model directory again and serve it (``ModelService.reload``).

        Raises:
            LookupError: no ``prediction`` section, so no model to reload.
            ModelError: the model is unusable; the one in service stays.
        """
        if self.models is None:
            raise LookupError("no model is configured: add a prediction section (prediction.model) "
                              f"to {self.config.source} and restart the controller")
        answer = self.models.reload()
        self.logger.warning("model reloaded from %s (%s)", self.models.directory, answer["model"]["model_digest"])
        return answer

    # --- Sending -------------------------------------------------------------------------
    def send(self, datapath, changes: Iterable[OfChange]) -> None:
        """Send every change description to ``datapath``, in order."""
        for message in to_ofmsgs(datapath, changes):
            datapath.send_msg(message)

    def send_outgoing(self, outgoing: Iterable[Outgoing]) -> None:
        """Send the control plane's answer: switch changes to their datapath, messages to their cell."""
        for item in outgoing:
            if isinstance(item, SwitchChange):
                if self.cluster is not None and not self.cluster.may_send(item.dp_id):
                    self.unsent["not_master"] += 1
                    continue
                datapath = self.datapaths.get(item.dp_id)
                if datapath is None:  # it converges from scratch when it connects
                    self.unsent["switch_not_connected"] += 1
                    continue
                datapath.send_msg(to_ofmsg(datapath, item.change))
            elif isinstance(item, MgmtMessage):
                if self.cluster is not None and not self.cluster.may_message(item.cell_id):
                    self.unsent["mgmt_not_master"] += 1
                    continue
                if self.channel is None:
                    self.unsent["mgmt_channel_not_bound"] += 1
                    continue
                self.channel.send(item)

    def _control(self, handler: str, produce: Callable[[ControlPlane], List[Outgoing]]) -> None:
        """Ask the control plane, send its answer; log and count any exception."""
        try:
            self.send_outgoing(produce(self.control))
        except Exception:  # one bad event must never take the controller down
            self.handler_errors[handler] += 1
            self.logger.exception("%s failed", handler)

    def _is_current(self, datapath) -> bool:
        """False for events of a second connection claiming the dp_id of a connected switch (counted)."""
        current = self.datapaths.get(datapath.id)
        if current is not None and current is not datapath:
            self.duplicate_connections[datapath.id] += 1
            return False
        return True

    def _dispatch(
        self, handler: str, datapath, decide: Callable[[MirroringDirector], List[OfChange]]
    ) -> None:
        """Ask the switch's director, send its answer; log and count any exception."""
        if not self._is_current(datapath):
            return
        try:
            director = self.directors.get(datapath.id)
            if director is None:
                if not self.ignored_switches[datapath.id]:
                    self.logger.warning("switch %s is not in %s: ignored", _dpid(datapath.id), CONFIG_ENV)
                self.ignored_switches[datapath.id] += 1
                return
            self.send(datapath, decide(director))
        except Exception:  # one bad event must never take the controller down
            self.handler_errors[handler] += 1
            self.logger.exception("%s on switch %s failed", handler, _dpid(datapath.id))

    # --- Events -------------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev) -> None:
        """A switch (re)connected: converge it to the pipeline."""
        datapath = ev.msg.datapath
        if datapath.id in self.directors:
            current = self.datapaths.get(datapath.id)
            if current is not None and current is not datapath and getattr(current, "is_active", False):
                self.duplicate_connections[datapath.id] += 1
                self.logger.warning("a second connection claims switch %s while its connection is live: "
                                    "refused and closed", _dpid(datapath.id))  # fmt: skip
                datapath.close()
                return
        if self.cluster is not None and datapath.id in self.directors:
            self.logger.info("switch %s connected: its master is decided through etcd", _dpid(datapath.id))
            self.datapaths[datapath.id] = datapath
            self.cluster.on_switch_connect(datapath)
            return
        if datapath.id in self.directors:
            self.logger.info("switch %s connected: installing the pipeline", _dpid(datapath.id))
            self.datapaths[datapath.id] = datapath
        self._dispatch("switch_features", datapath, lambda d: d.on_switch_connect(self.clock.now()))
        if datapath.id in self.directors:
            try:  # the cell ports' link state, for cells whose link went down while we were away
                datapath.send_msg(datapath.ofproto_parser.OFPPortDescStatsRequest(datapath, 0))
            except Exception:
                self.handler_errors["port_desc_request"] += 1
                self.logger.exception("port description request to %s failed", _dpid(datapath.id))

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def state_change_handler(self, ev) -> None:
        """A switch disconnected: stop sending to it."""
        datapath = ev.datapath
        if datapath is not None and self.datapaths.get(datapath.id) is datapath:
            del self.datapaths[datapath.id]
            self.logger.warning("switch %s disconnected", _dpid(datapath.id))
        if datapath is not None and self.cluster is not None:
            self.cluster.on_switch_disconnect(datapath)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev) -> None:
        """A port changed: a cell port's link going down or up is a health input."""
        msg = ev.msg
        datapath = msg.datapath
        if not self._is_current(datapath):
            return
        up = msg.reason != datapath.ofproto.OFPPR_DELETE and _port_is_up(datapath.ofproto, msg.desc)
        live = self._port_is_live(datapath.ofproto, msg.desc)
        now = self.clock.now()
        self._control("port_status", lambda c: c.on_port_status(datapath.id, msg.desc.port_no, up, now, live))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_handler(self, ev) -> None:
        """The ports at connection time: cell ports found down are failed over."""
        datapath = ev.msg.datapath
        ofp = datapath.ofproto
        if not self._is_current(datapath):
            return

        def produce(control: ControlPlane) -> List[Outgoing]:
            now = self.clock.now()
            out: List[Outgoing] = []
            for port in ev.msg.body:
                out += control.on_port_status(datapath.id, port.port_no, _port_is_up(ofp, port), now,
                                              self._port_is_live(ofp, port))  # fmt: skip
            return out

        self._control("port_desc", produce)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev) -> None:
        """A table-miss or a controller-bound packet."""
        msg = ev.msg
        if self.cluster is not None and not self.cluster.admit_packet_in(msg):
            return  # held while this new master reads the switch, or not this controller's switch
        self.handle_packet_in(msg)

    def handle_packet_in(self, msg) -> None:
        """Hand one packet-in to its switch's director and send the answer."""
        self._dispatch(
            "packet_in",
            msg.datapath,
            lambda d: d.on_packet_in(self.clock.now(), msg.match["in_port"], msg.table_id, msg.data),
        )

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev) -> None:
        """An FSC entry ended: its final counters. The flow's last entry ends the flow (``flow_ended``)."""
        msg = ev.msg
        if self.cluster is not None and not self.cluster.may_send(msg.datapath.id):
            self.unsent["flow_removed_not_master"] += 1
            return
        now = self.clock.now()
        ended = []

        def decide(director: MirroringDirector) -> List[OfChange]:
            changes, entry = flow_removed(
                director, now, msg.cookie, match_to_dict(msg.match), msg.packet_count, msg.byte_count,
                msg.duration_sec + msg.duration_nsec / NANOSECONDS,
            )  # fmt: skip
            if entry is not None:
                ended.append((director, entry))
            return changes

        self._dispatch("flow_removed", msg.datapath, decide)  # the group deletions are sent first
        for director, entry in ended:
            self.flow_ended(director, entry, now)

    def flow_ended(self, director: MirroringDirector, entry, now: float) -> None:
        """A flow ended: its policy learns the outcome; ``EventFlowEnded`` carries its telemetry record."""
        try:
            tell_policy(director, entry, now)
            record = flow_record(entry, director.dp_id, director.idle_timeout)
            self.send_event_to_observers(EventFlowEnded(director.dp_id, entry.flow_id, record, now))
        except Exception:  # one bad event must never take the controller down
            self.handler_errors["flow_ended"] += 1
            self.logger.exception("flow end of %s on switch %s failed", entry.key, _dpid(director.dp_id))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error_handler(self, ev) -> None:
        """The switch refused a message: log and count it; a refused addition rolls the director back."""
        msg = ev.msg
        self.switch_errors[(msg.type, msg.code)] += 1
        if self.cluster is not None and msg.type == msg.datapath.ofproto.OFPET_ROLE_REQUEST_FAILED:
            self.cluster.on_role_error(msg)
        self.logger.warning(
            "switch %s refused a message: type 0x%02x code 0x%02x data %s",
            _dpid(msg.datapath.id),
            msg.type,
            msg.code,
            bytes(msg.data or b"")[:64].hex(),
        )
        refusal = refused_addition(msg.type, msg.code, bytes(msg.data or b""))
        if refusal is not None:
            self._dispatch("switch_error", msg.datapath, lambda d: d.on_refused(refusal, self.clock.now()))


    def _port_is_live(self, ofp, desc) -> Optional[bool]:
        """The port's LIVE flag when the cells speak BFD with the switch (it then means the cell is up), else None."""
        if self.config.bfd is None:
            return None
        return bool(desc.state & ofp.OFPPS_LIVE)


def _port_is_up(ofp, desc) -> bool:
    """Link up and not administratively down (an OFPPort)."""
    return not (desc.state & ofp.OFPPS_LINK_DOWN) and not (desc.config & ofp.OFPPC_PORT_DOWN)


def _dpid(dp_id) -> str:
    return f"{dp_id:016x}" if isinstance(dp_id, int) else str(dp_id)
