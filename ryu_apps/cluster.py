"""Several controllers, one master per switch: the shell that talks to etcd and sends role requests.

Used by ``ryu_apps/mirroring_director.py`` when the configuration has an
``etcd`` section (without one, nothing here runs). One green thread, every
``renew_s`` (an eighth of the lease):

1. renews this controller's lease key (its value: the switches it is connected to)
   and keeps etcd's own lease alive (the backstop that removes the key of a
   controller that is gone);
2. reads every controller's key and every switch's last claim, and asks
   ``prism.cluster.mastership.Mastership`` which roles to change;
3. claims a switch by writing its claim key (the write's revision is the
   generation id) and sends OFPRoleRequest(MASTER, generation); steps down with
   OFPRoleRequest(SLAVE, the last claim's generation);
4. publishes, for the switches it masters, what a successor needs (group
   numbering with target replication factors, cell verdicts), differences only.

A new master reads the switch's groups and flows and adopts them
(``prism.cluster.takeover``), then asks for the ports again (cells whose link went
down meanwhile). Packet-ins that arrive while it reads are held and handled
right after. No packet-in or flow-removed ever waits on etcd.

When etcd cannot be reached the controller says so (log and ``status()``),
keeps the roles it has and claims nothing until etcd answers again.
"""

from __future__ import annotations

import base64
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import etcd3gw
from etcd3gw import exceptions as etcd_exceptions
from ryu.controller import ofp_event
from ryu.controller.handler import MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub

from prism.config.etcd import EtcdConfig
from prism.cluster.mastership import ROLE_MASTER, ROLE_SLAVE, Mastership, Membership, RoleChange
from prism.cluster.shared_state import (
    Publisher,
    SwitchShared,
    beats_from,
    claim_key,
    claims_from,
    controller_key,
    controllers_prefix,
    encode_beat,
    encode_claim,
    masters_prefix,
    switch_prefix,
    switch_state_from,
    switch_state_values,
)
from prism.cluster.takeover import plan_takeover
from ryu_apps.ofmsg import (
    port_desc_request,
    role_of_reply,
    role_request,
    switch_flows,
    switch_groups,
    takeover_requests,
)

#: Environment variable with this controller's id (default: host name and OpenFlow port).
CONTROLLER_ID_ENV = "PRISM_CONTROLLER_ID"
#: Packet-ins held per switch while a new master reads its tables; beyond, they are dropped.
MAX_HELD_PACKET_INS = 4096
#: Most takeovers remembered for ``status()``.
MAX_TAKEOVERS_KEPT = 64
#: A takeover whose replies have not all come after this long asks the switch again.
ADOPTION_RETRY_S = 2.0
#: ``more`` flag of a multipart reply (OFPMPF_REPLY_MORE).
MULTIPART_REPLY_MORE = 1


class EtcdUnreachable(Exception):
    """etcd did not answer (connection refused, timeout) or answered with an error."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8")


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdStore:
    """The few etcd v3 calls the cluster makes, through etcd3gw (requests: green under eventlet).

    Args:
        endpoints: ``(host, port)`` of etcd members; the next is tried when one fails.
        timeout: Seconds per request.
    """

    def __init__(self, endpoints, timeout: float) -> None:
        self._clients = [etcd3gw.client(host=host, port=port, timeout=timeout) for host, port in endpoints]
        self._index = 0

    def _post(self, path: str, payload: dict) -> dict:
        client = self._clients[self._index]
        try:
            return client.post(client.get_url(path), json=payload)
        except (etcd_exceptions.Etcd3Exception, OSError, ValueError) as error:
            self._index = (self._index + 1) % len(self._clients)
            raise EtcdUnreachable(f"{type(error).__name__}: {str(error)[:200]}") from None

    def grant(self, ttl_s: int) -> int:
        """A new etcd lease of ``ttl_s`` seconds; its id."""
        return int(self._post("/lease/grant", {"TTL": ttl_s, "ID": 0})["ID"])

    def keepalive(self, lease_id: int) -> int:
        """Renew a lease; its remaining TTL (<= 0: it had expired)."""
        return int(self._post("/lease/keepalive", {"ID": lease_id}).get("result", {}).get("TTL", -1))

    def revoke(self, lease_id: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease_id})

    def put(self, key: str, value: str, lease_id: Optional[int] = None) -> int:
        """Write a key; the revision of the write."""
        payload: Dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease_id is not None:
            payload["lease"] = lease_id
        return int(self._post("/kv/put", payload)["header"]["revision"])

    def delete(self, key: str) -> None:
        self._post("/kv/deleterange", {"key": _b64(key)})

    def read(self, prefix: str) -> Dict[str, Tuple[str, int]]:
        """Every key under ``prefix``: key -> (value, modification revision)."""
        answer = self._post("/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return {
            _unb64(kv["key"]): (_unb64(kv.get("value", "")), int(kv["mod_revision"]))
            for kv in answer.get("kvs", [])
        }


@dataclass
class Adoption:
    """A takeover in progress on one switch: the replies being gathered, the packet-ins held."""

    generation: int
    started_at: float
    xids: Dict[int, str] = field(default_factory=dict)  # xid -> "groups" | "flows"
    groups: List[Any] = field(default_factory=list)
    flows: List[Any] = field(default_factory=list)
    done: set = field(default_factory=set)
    held: List[Any] = field(default_factory=list)
    shared: SwitchShared = field(default_factory=SwitchShared)
    asked_at: float = 0.0


def controller_id_from_env(of_port: Any) -> str:
    """``PRISM_CONTROLLER_ID``, else ``<host name>:<OpenFlow port>``."""
    return os.environ.get(CONTROLLER_ID_ENV) or f"{socket.gethostname()}:{of_port}"


class Cluster:
    """This controller's part in a network shared through etcd.

    Args:
        app: The MirroringDirectorApp (its directors, send functions and logger).
        config: The ``etcd`` section.
        controller_id: This controller's id, unique in the cluster.
    """

    def __init__(self, app, config: EtcdConfig, controller_id: str) -> None:
        self.app = app
        self.config = config
        self.controller_id = controller_id
        self.logger = app.logger
        self.mastership = Mastership(controller_id, app.directors, config.lease_s)
        self.store = EtcdStore(config.endpoints, timeout=max(0.05, config.lease_s / 2))
        self.lease_id: Optional[int] = None
        self.reachable: Optional[bool] = None
        self.unreachable_since: Optional[float] = None
        self.last_error = ""
        self.datapaths: Dict[int, Any] = {}
        self.claims: Dict[int, Tuple[str, int]] = {}
        self.generations: Dict[int, int] = {}
        self.ready: set = set()
        self.adoptions: Dict[int, Adoption] = {}
        self.publishers: Dict[int, Publisher] = {dp_id: Publisher() for dp_id in app.directors}
        self.switches_of_cell: Dict[str, List[int]] = {}
        for dp_id, director in app.directors.items():
            for cell_id in director.cell_ports:
                self.switches_of_cell.setdefault(cell_id, []).append(dp_id)
        self.takeovers: List[Dict[str, Any]] = []
        self.counts: Counter = Counter()

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Renew, read, decide, publish; every ``renew_s`` until the app stops.

        Ctrl-C landing in this green thread revokes the lease (a standby takes over at once)
        and goes on to ryu-manager (spawn it with ``raise_error=True``), which stops.
        """
        try:
            while self.app.is_active:
                started = time.monotonic()
                try:
                    self.step()
                except Exception:  # the loop must outlive anything etcd or a switch does
                    self.counts["step_errors"] += 1
                    self.logger.exception("cluster step failed")
                hub.sleep(max(0.0, self.mastership.renew_s - (time.monotonic() - started)))
        except KeyboardInterrupt:
            self.stop()
            raise

    def step(self) -> None:
        """One renewal and decision round."""
        try:
            beats_read = self._renew_and_read()
        except EtcdUnreachable as error:
            self._set_reachable(False, str(error))
            return
        self._set_reachable(True)
        self._drop_superseded_claims()
        self._retry_stalled_adoptions()
        for change in self.mastership.decide(time.monotonic(), beats_read, self.datapaths):
            try:
                self._change_role(change)
            except EtcdUnreachable as error:
                self._set_reachable(False, str(error))
                return
        self._publish()

    def _renew_and_read(self):
        cluster = self.config.cluster
        if self.lease_id is None:
            self.lease_id = self.store.grant(max(1, math.ceil(self.config.lease_s)))
        try:
            self.store.put(controller_key(cluster, self.controller_id), encode_beat(self.datapaths), self.lease_id)
        except EtcdUnreachable:
            self.lease_id = None  # etcd may be back with the lease expired: a new one next round
            raise
        if self.store.keepalive(self.lease_id) <= 0:
            self.lease_id = None
            self.counts["lease_expired"] += 1
        self.mastership.renewed(time.monotonic())
        beats_read = beats_from(self.store.read(controllers_prefix(cluster)), cluster)
        self.claims = claims_from(self.store.read(masters_prefix(cluster)), cluster)
        return beats_read

    def _drop_superseded_claims(self) -> None:
        """A switch claimed later by another controller has demoted this one (OpenFlow 1.3 sends no
        role-status message): its role is undecided again, and the decision that follows claims it
        anew (with a newer generation) or steps down, as the shared view says."""
        for dp_id, (owner, generation) in self.claims.items():
            if owner != self.controller_id and self.mastership.is_master(dp_id):
                self.counts["superseded"] += 1
                self.logger.warning("switch %016x was claimed by %s (generation %d) after us", dp_id, owner,
                                    generation)
                self.mastership.forget(dp_id)
                self.ready.discard(dp_id)
                self.adoptions.pop(dp_id, None)

    def _set_reachable(self, reachable: bool, error: str = "") -> None:
        if reachable and self.reachable is False:
            away_s = time.monotonic() - (self.unreachable_since or time.monotonic())
            self.logger.warning("etcd reachable again after %.1f s; roles kept: %s", away_s, self._roles_text())
            self.unreachable_since = None
            # the others could not renew either: every controller gets a whole lease from now
            self.mastership.membership = Membership(self.config.lease_s)
        elif not reachable:
            self.counts["etcd_unreachable_rounds"] += 1
            self.last_error = error
            if self.reachable is not False:
                self.unreachable_since = time.monotonic()
                self.logger.warning("etcd unreachable (%s): keeping roles %s, claiming nothing",
                                    error, self._roles_text())
        self.reachable = reachable

    def _roles_text(self) -> str:
        return ", ".join(f"{dp_id:x}={role}" for dp_id, role in sorted(self.mastership.roles.items())) or "none"

    # --- roles ----------------------------------------------------------------------------------
    def _change_role(self, change: RoleChange) -> None:
        datapath = self.datapaths.get(change.dp_id)
        if datapath is None:
            return
        if change.role == ROLE_MASTER:
            key = claim_key(self.config.cluster, change.dp_id)
            generation = self.store.put(key, encode_claim(self.controller_id))
            self.claims[change.dp_id] = (self.controller_id, generation)
            self.logger.warning("claiming switch %016x as master, generation %d", change.dp_id, generation)
            self.counts["claims"] += 1
            datapath.send_msg(role_request(datapath, True, generation))
        else:
            generation = self.claims.get(change.dp_id, ("", 0))[1]
            self.ready.discard(change.dp_id)
            self.adoptions.pop(change.dp_id, None)
            datapath.send_msg(role_request(datapath, False, generation))

    def on_role_reply(self, msg) -> None:
        """The switch confirmed a role: as master, start reading its tables."""
        datapath = msg.datapath
        master = role_of_reply(datapath, msg.role)
        if master is None:
            return
        dp_id = datapath.id
        if not master:
            self.mastership.set_role(dp_id, ROLE_SLAVE)
            self.ready.discard(dp_id)
            self.adoptions.pop(dp_id, None)
            self.logger.info("slave of switch %016x (generation %d)", dp_id, msg.generation_id)
            return
        if self.mastership.is_master(dp_id) and (dp_id in self.ready or dp_id in self.adoptions):
            return
        self.mastership.set_role(dp_id, ROLE_MASTER)
        self.generations[dp_id] = msg.generation_id
        raise_generation = getattr(self.app, "raise_generation", None)
        if raise_generation is not None:  # fencing: cells refuse directory/profiles of older generations
            raise_generation(msg.generation_id)
        adoption = Adoption(msg.generation_id, time.time())
        try:
            items = self.store.read(switch_prefix(self.config.cluster, dp_id))
            adoption.shared = switch_state_from(items, self.config.cluster, dp_id)
            self.publishers[dp_id].reset({k: v for k, (v, _rev) in items.items()})
        except EtcdUnreachable as error:  # the switch alone still gives groups and flows
            self._set_reachable(False, str(error))
        self.adoptions[dp_id] = adoption
        self._ask_tables(datapath, adoption)
        self.logger.warning("master of switch %016x (generation %d): reading its groups and flows",
                            dp_id, msg.generation_id)

    @staticmethod
    def _ask_tables(datapath, adoption: Adoption) -> None:
        adoption.xids.clear()
        adoption.groups, adoption.flows, adoption.done = [], [], set()
        adoption.asked_at = time.monotonic()
        for request in takeover_requests(datapath):
            datapath.send_msg(request)
            adoption.xids[request.xid] = "groups" if "Group" in type(request).__name__ else "flows"

    def _retry_stalled_adoptions(self) -> None:
        """A takeover whose replies did not all come (a lost or refused request) asks again."""
        for dp_id, adoption in list(self.adoptions.items()):
            datapath = self.datapaths.get(dp_id)
            if datapath is not None and time.monotonic() - adoption.asked_at > ADOPTION_RETRY_S:
                self.counts["adoption_retries"] += 1
                self.logger.warning("switch %016x: no complete table read in %g s, asking again", dp_id,
                                    ADOPTION_RETRY_S)
                self._ask_tables(datapath, adoption)

    def on_role_error(self, msg) -> None:
        """A role request refused (e.g. a stale generation): asked again after a lease."""
        self.counts["role_errors"] += 1
        self.logger.warning("switch %016x refused a role request (code %d)", msg.datapath.id, msg.code)

    # --- takeover -----------------------------------------------------------------------------
    def on_stats_reply(self, msg, kind: str) -> None:
        """A group description or flow statistics reply: part of a takeover, or someone else's."""
        adoption = self.adoptions.get(msg.datapath.id)
        if adoption is None or adoption.xids.get(msg.xid) != kind:
            return
        datapath = msg.datapath
        if kind == "groups":
            adoption.groups += switch_groups(datapath, msg.body)
        else:
            adoption.flows += switch_flows(datapath, msg.body)
        if not msg.flags & MULTIPART_REPLY_MORE:
            adoption.done.add(kind)
        if adoption.done >= {"groups", "flows"}:
            self._finish_adoption(datapath, adoption)

    def _finish_adoption(self, datapath, adoption: Adoption) -> None:
        dp_id = datapath.id
        director = self.app.directors[dp_id]
        cell_of_port = {port: cell_id for cell_id, port in director.cell_ports.items()}
        plan = plan_takeover(cell_of_port, adoption.groups, adoption.flows, adoption.shared)
        changes = director.adopt(self.app.clock.now(), plan, adoption.shared.down, adoption.shared.draining)
        del self.adoptions[dp_id]
        self.ready.add(dp_id)
        self.app.send(datapath, changes)
        datapath.send_msg(port_desc_request(datapath))
        finished = time.time()
        record = {
            "dp_id": dp_id, "generation": adoption.generation, "fresh": not plan.has_pipeline,
            "started_at": adoption.started_at, "finished_at": finished,
            "read_ms": round((finished - adoption.started_at) * 1000, 1),
            "groups_adopted": len(plan.groups), "flows_adopted": len(plan.flows),
            "orphan_groups_deleted": len(plan.orphan_groups) + len(plan.stray_ff_groups),
            "unreadable_groups": len(plan.unreadable_groups), "unreadable_flows": plan.unreadable_flows,
            "duplicate_profiles": plan.duplicate_profiles, "held_packet_ins": len(adoption.held),
        }  # fmt: skip
        self.takeovers = (self.takeovers + [record])[-MAX_TAKEOVERS_KEPT:]
        self.logger.warning("switch %016x taken over: %s", dp_id, record)
        for msg in adoption.held:
            self.app.handle_packet_in(msg)

    # --- gates for the director app ---------------------------------------------------------
    def admit_packet_in(self, msg) -> bool:
        """Whether the app handles this packet-in now (held during a takeover, dropped when not master)."""
        dp_id = msg.datapath.id
        if dp_id in self.ready:
            return True
        adoption = self.adoptions.get(dp_id)
        if adoption is not None and len(adoption.held) < MAX_HELD_PACKET_INS:
            adoption.held.append(msg)
        else:
            self.counts["packet_ins_not_master"] += 1
        return False

    def may_send(self, dp_id: int) -> bool:
        """Whether this controller programs ``dp_id`` (its master, tables adopted)."""
        return dp_id in self.ready

    def may_message(self, cell_id: str) -> bool:
        """Whether this controller talks to a cell: it masters a switch the cell hangs on.

        A slave's directors are not kept up to date (a new master adopts from the
        switch), so their profile tables and seed requests must not reach cells.
        """
        return any(dp_id in self.ready for dp_id in self.switches_of_cell.get(cell_id, ()))

    def on_switch_connect(self, datapath) -> None:
        """A switch connected: it is a candidate from the next round on (no change sent yet)."""
        self.datapaths[datapath.id] = datapath
        self.mastership.forget(datapath.id)

    def on_switch_disconnect(self, datapath) -> None:
        if self.datapaths.get(datapath.id) is datapath:
            del self.datapaths[datapath.id]
            self.mastership.forget(datapath.id)
            self.ready.discard(datapath.id)
            self.adoptions.pop(datapath.id, None)

    # --- shared state ---------------------------------------------------------------------------
    def _publish(self) -> None:
        for dp_id in sorted(self.ready):
            director = self.app.directors[dp_id]
            current = switch_state_values(
                self.config.cluster, dp_id,
                [(g.group_id, g.profile, g.target_replication_factor, g.pending_mirrors)
                 for g in director.groups.values()],
                director.down_cells, director.draining_cells,
            )  # fmt: skip
            publisher = self.publishers[dp_id]
            puts, deletes = publisher.changes(current)
            if not puts and not deletes:
                continue
            try:
                for key, value in puts.items():
                    self.store.put(key, value)
                for key in deletes:
                    self.store.delete(key)
            except EtcdUnreachable as error:
                self._set_reachable(False, str(error))
                return
            publisher.written(puts, deletes)
            self.counts["state_writes"] += len(puts) + len(deletes)

    def stop(self) -> None:
        """Give the switches up at once (revoke the lease): a standby takes over without waiting."""
        lease_id, self.lease_id = self.lease_id, None
        self.ready.clear()
        if lease_id is not None:
            try:
                self.store.revoke(lease_id)
            except EtcdUnreachable:
                pass

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        """This controller's view: id, etcd reachability, role and generation per switch, takeovers."""
        return {
            "controller_id": self.controller_id,
            "etcd_reachable": bool(self.reachable),
            "etcd_error": "" if self.reachable else self.last_error,
            "lease_s": self.config.lease_s,
            "roles": {f"{dp_id:016x}": role for dp_id, role in sorted(self.mastership.roles.items())},
            "ready": sorted(f"{dp_id:016x}" for dp_id in self.ready),
            "generations": {f"{dp_id:016x}": gen for dp_id, gen in sorted(self.generations.items())},
            "takeovers": list(self.takeovers),
            "counts": dict(self.counts),
        }


class ClusterEvents:
    """Event handlers the director app inherits: role replies and the takeover's stats replies.

    They do nothing unless the app has a ``cluster`` (an ``etcd`` section).
    """

    cluster: Optional[Cluster] = None

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def role_reply_handler(self, ev) -> None:
        """The switch confirmed this controller's role."""
        if self.cluster is not None:
            self._cluster_call("role_reply", lambda: self.cluster.on_role_reply(ev.msg))

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def group_desc_handler(self, ev) -> None:
        """Groups read back by a new master."""
        if self.cluster is not None:
            self._cluster_call("group_desc", lambda: self.cluster.on_stats_reply(ev.msg, "groups"))

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def takeover_flow_stats_handler(self, ev) -> None:
        """Flow entries read back by a new master (other apps' flow statistics are ignored here)."""
        if self.cluster is not None:
            self._cluster_call("flow_stats", lambda: self.cluster.on_stats_reply(ev.msg, "flows"))

    def _cluster_call(self, handler: str, call) -> None:
        try:
            call()
        except Exception:  # one bad reply must never take the controller down
            self.handler_errors[handler] += 1
            self.logger.exception("%s failed", handler)
