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
comes from the predictive policy (``prism.policy_predictive``, the model
served by ``ryu_apps.prediction.ModelService``; ``reload_model`` swaps it
live); without one, from ``FixedPolicy``. A model that does not load stops
ryu-manager at start with the reason.

All decisions live in ``prism.director.MirroringDirector`` (one per switch)
and ``prism.control.ControlPlane`` (cell health and failover across them);
this shell only turns events into their calls, their answers into OpenFlow
messages (``ryu_apps.ofmsg``) and management datagrams
(``ryu_apps.mgmt_channel``), and survives its own exceptions.

Two green threads are started in ``start()``: one receives management
datagrams (heartbeats, ``seeded``) on ``management.listen``, one ticks every
``TICK_S`` (failure detection, batched messages to cells). Port status
messages for cell ports are the link-failure input.

With an ``etcd`` section several ryu-managers share the switches
(``ryu_apps/cluster.py``, docs/controllers.md): a third green thread holds
this controller's lease and roles, and only a switch's master programs it,
handles its packet-ins and talks to its cells. ``PRISM_CONTROLLER_ID`` names
the controller, ``PRISM_MGMT_LISTEN`` gives it its own management address.
"""

from __future__ import annotations

import os
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

from prism.actions import MgmtMessage
from prism.config import ConfigError, PrismConfig, load_config
from prism.config_mgmt import parse_address
from prism.control import ControlPlane, Outgoing, SwitchChange
from prism.director import MirroringDirector
from prism.flow_end import flow_removed, tell_policy
from prism.health import HealthSettings
from prism.openflow import OfChange
from prism.policy import FixedPolicy
from prism.ring import HashRing
from prism.telemetry import flow_record
from ryu_apps.cluster import Cluster, ClusterEvents, controller_id_from_env
from ryu_apps.mgmt_channel import MgmtChannel
from ryu_apps.ofmsg import match_to_dict, to_ofmsg, to_ofmsgs
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
            policy = FixedPolicy(ring, config.default_replication_factor)
        directors[dp_id] = MirroringDirector(switch, config.idle_timeout, policy, logger=logger, ring=ring)
    return directors


def load_models(config: PrismConfig):
    """The model service when the configuration names a model, else None (SystemExit if it cannot load)."""
    if config.prediction is None:
        return None
    from ryu_apps.prediction import ModelError, ModelService  # scikit-learn only when a model is used

    try:
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
        self.models = load_models(self.config)
        self.directors = load_directors(self.config, self.logger, self.models)
        self.control = ControlPlane(
            self.directors, time.time(), health_settings(self.config), cell_addresses(self.config)
        )
        if self.models is not None:
            self.models.attach_health(self.control.detector)
        self.datapaths: Dict[int, object] = {}
        self.channel: Optional[MgmtChannel] = None
        self.handler_errors: Counter = Counter()
        self.switch_errors: Counter = Counter()
        self.ignored_switches: Counter = Counter()
        self.unsent: Counter = Counter()
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
            self.logger.info("predictive policy: model %s, budget %g mirror copies per packet",
                             self.models.directory, self.config.prediction.budget)

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
                self.channel = MgmtChannel(listen, cell_addresses(self.config))
                self.logger.info("management channel on %s:%d", *self.channel.address)
            except OSError as error:
                if not warned:
                    self.logger.warning("cannot bind management address %s:%d yet (%s); retrying",
                                        listen[0], listen[1], error)
                    warned = True
                hub.sleep(BIND_RETRY_S)
        while self.is_active:
            try:
                received = self.channel.receive()
            except Exception as error:  # the loop must outlive anything a datagram or the socket does
                self.handler_errors["mgmt_receive"] += 1
                self.logger.exception("management receive failed")
                if isinstance(error, OSError):  # a socket in trouble, not one bad datagram
                    hub.sleep(BIND_RETRY_S)
                continue
            if received is not None:
                message, sender = received
                self.handle_mgmt_message(message, sender)

    def _tick_loop(self) -> None:
        while self.is_active:
            self.tick(time.time())
            hub.sleep(TICK_S)

    def handle_mgmt_message(self, message: dict, sender: tuple) -> None:
        """One decoded management message (heartbeat, seeded ...) from ``sender``."""
        self._control("mgmt", lambda c: c.on_mgmt_message(message, sender, time.time()))

    def tick(self, now: float) -> None:
        """One tick of the control plane."""
        self._control("tick", lambda c: c.tick(now))

    # --- Admin actions (the REST API) -------------------------------------------------------------
    def drain_cell(self, cell_id: str) -> None:
        """Drain a cell now and send what that takes (UnknownCell if it is not configured)."""
        self.send_outgoing(self.control.drain(cell_id, time.time()))

    def restore_cell(self, cell_id: str) -> None:
        """Restore a drained cell now (UnknownCell if it is not configured)."""
        self.send_outgoing(self.control.restore(cell_id, time.time()))

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

    def _dispatch(
        self, handler: str, datapath, decide: Callable[[MirroringDirector], List[OfChange]]
    ) -> None:
        """Ask the switch's director, send its answer; log and count any exception."""
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
        if self.cluster is not None and datapath.id in self.directors:
            self.logger.info("switch %s connected: its master is decided through etcd", _dpid(datapath.id))
            self.datapaths[datapath.id] = datapath
            self.cluster.on_switch_connect(datapath)
            return
        if datapath.id in self.directors:
            self.logger.info("switch %s connected: installing the pipeline", _dpid(datapath.id))
            self.datapaths[datapath.id] = datapath
        self._dispatch("switch_features", datapath, lambda d: d.on_switch_connect(time.time()))
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
        up = msg.reason != datapath.ofproto.OFPPR_DELETE and _port_is_up(datapath.ofproto, msg.desc)
        self._control("port_status", lambda c: c.on_port_status(datapath.id, msg.desc.port_no, up, time.time()))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_handler(self, ev) -> None:
        """The ports at connection time: cell ports found down are failed over."""
        datapath = ev.msg.datapath
        ofp = datapath.ofproto

        def produce(control: ControlPlane) -> List[Outgoing]:
            now = time.time()
            out: List[Outgoing] = []
            for port in ev.msg.body:
                out += control.on_port_status(datapath.id, port.port_no, _port_is_up(ofp, port), now)
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
            lambda d: d.on_packet_in(time.time(), msg.match["in_port"], msg.table_id, msg.data),
        )

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev) -> None:
        """An FSC entry ended: its final counters. The flow's last entry ends the flow (``flow_ended``)."""
        msg = ev.msg
        if self.cluster is not None and not self.cluster.may_send(msg.datapath.id):
            self.unsent["flow_removed_not_master"] += 1
            return
        now = time.time()
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
        """The switch refused a message: log it (with what the switch echoed back) and count it."""
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


def _port_is_up(ofp, desc) -> bool:
    """Link up and not administratively down (an OFPPort)."""
    return not (desc.state & ofp.OFPPS_LINK_DOWN) and not (desc.config & ofp.OFPPC_PORT_DOWN)


def _dpid(dp_id) -> str:
    return f"{dp_id:016x}" if isinstance(dp_id, int) else str(dp_id)
