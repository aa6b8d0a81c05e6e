"""The Mirroring Director as a Ryu app: hands OpenFlow events to prism.director, sends what it decides.

Launch from the repository root, with the project's virtualenv active::

    PRISM_CONFIG=examples/prism.yaml ryu-manager ryu_apps/mirroring_director.py

``PRISM_CONFIG`` names the PRISM YAML configuration (``prism check-config FILE``
validates it); a missing or bad file stops ryu-manager at start with every
problem listed. Switches connect to ryu-manager's OpenFlow port (6653 by
default) and must speak OpenFlow 1.3; a switch whose dpid is not in the file
is logged and ignored.

All decisions live in ``prism.director.MirroringDirector`` (one per switch);
this shell only turns events into its calls, its answers into messages
(``ryu_apps.ofmsg``), and survives its own exceptions.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Callable, Dict, Iterable, List

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, HANDSHAKE_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.ofproto import ofproto_v1_3

from prism.config import ConfigError, PrismConfig, load_config
from prism.director import MirroringDirector
from prism.openflow import OfChange
from prism.policy import FixedPolicy
from prism.ring import HashRing
from ryu_apps.ofmsg import match_to_dict, to_ofmsgs

#: Environment variable naming the PRISM configuration file.
CONFIG_ENV = "PRISM_CONFIG"
NANOSECONDS = 1e9


def load_directors(config: PrismConfig, logger) -> Dict[int, MirroringDirector]:
    """One director per configured switch, placing flows with a FixedPolicy over its cells."""
    return {
        dp_id: MirroringDirector(
            switch,
            config.idle_timeout,
            FixedPolicy(HashRing(switch.cell_ids), config.default_replication_factor),
            logger=logger,
        )
        for dp_id, switch in config.switches.items()
    }


class MirroringDirectorApp(app_manager.RyuApp):
    """Ryu shell of the Mirroring Director.

    Attributes:
        config: The loaded PRISM configuration.
        directors: dp_id -> MirroringDirector.
        handler_errors: Exceptions caught per handler (the controller carries on).
        switch_errors: OpenFlow error messages received, by ``(type, code)``.
        ignored_switches: Events from switches not in the configuration, by dp_id.
    """

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

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
        self.directors = load_directors(self.config, self.logger)
        self.handler_errors: Counter = Counter()
        self.switch_errors: Counter = Counter()
        self.ignored_switches: Counter = Counter()
        self.logger.info(
            "PRISM Mirroring Director: %d switch(es) from %s, idle_timeout %d s, replication factor %d",
            len(self.directors),
            path,
            self.config.idle_timeout,
            self.config.default_replication_factor,
        )

    # --- Sending -------------------------------------------------------------------------
    def send(self, datapath, changes: Iterable[OfChange]) -> None:
        """Send every change description to ``datapath``, in order."""
        for message in to_ofmsgs(datapath, changes):
            datapath.send_msg(message)

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
        if datapath.id in self.directors:
            self.logger.info("switch %s connected: installing the pipeline", _dpid(datapath.id))
        self._dispatch("switch_features", datapath, lambda d: d.on_switch_connect(time.time()))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev) -> None:
        """A table-miss or a controller-bound packet."""
        msg = ev.msg
        self._dispatch(
            "packet_in",
            msg.datapath,
            lambda d: d.on_packet_in(time.time(), msg.match["in_port"], msg.table_id, msg.data),
        )

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev) -> None:
        """An FSC entry ended: its final counters."""
        msg = ev.msg
        self._dispatch(
            "flow_removed",
            msg.datapath,
            lambda d: d.on_flow_removed(
                time.time(),
                msg.cookie,
                match_to_dict(msg.match),
                msg.packet_count,
                msg.byte_count,
                msg.duration_sec + msg.duration_nsec / NANOSECONDS,
            ),
        )

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error_handler(self, ev) -> None:
        """The switch refused a message: log it (with what the switch echoed back) and count it."""
        msg = ev.msg
        self.switch_errors[(msg.type, msg.code)] += 1
        self.logger.warning(
            "switch %s refused a message: type 0x%02x code 0x%02x data %s",
            _dpid(msg.datapath.id),
            msg.type,
            msg.code,
            bytes(msg.data or b"")[:64].hex(),
        )


def _dpid(dp_id) -> str:
    return f"{dp_id:016x}" if isinstance(dp_id, int) else str(dp_id)
