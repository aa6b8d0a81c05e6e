"""The cluster shell with an in-memory etcd: claims, role requests, takeover reads, held packet-ins, etcd away."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_v1_3 as OFP  # noqa: E402

from testkit import oxm  # noqa: E402
from prism.openflow.changes import TABLE_FSC  # noqa: E402
from ryu_apps.cluster import EtcdUnreachable  # noqa: E402
from tests.support import director_app  # noqa: E402
from tests.unit.test_mirroring_director_app import FakeDatapath, _packet_in, app_module  # noqa: E402

CONFIG = textwrap.dedent("""\
    idle_timeout: 7
    default_replication_factor: 1
    switches:
      - dpid: 0x1
        cells:
          - {id: cell1, port: 1}
          - {id: cell2, port: 2}
        edge_ports: [4, 5]
    etcd:
      endpoints: ["127.0.0.1:2379"]
      lease_s: 0.75
    """)


class FakeStore:
    """etcd in a dict: every write takes the next revision; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.kv = {}
        self.revision = 1
        self.down = False
        self.leases = 0
        self.calls = 0

    def _check(self):
        self.calls += 1
        if self.down:
            raise EtcdUnreachable("ConnectionFailedError: refused")

    def grant(self, ttl_s):
        self._check()
        self.leases += 1
        return self.leases

    def keepalive(self, lease_id):
        self._check()
        return 1

    def revoke(self, lease_id):
        self._check()

    def put(self, key, value, lease_id=None):
        self._check()
        self.revision += 1
        self.kv[key] = (value, self.revision)
        return self.revision

    def delete(self, key):
        self._check()
        self.kv.pop(key, None)

    def read(self, prefix):
        self._check()
        return {k: v for k, v in self.kv.items() if k.startswith(prefix)}


def make_app(tmp_path, monkeypatch, name, store):
    app = director_app(tmp_path, monkeypatch, CONFIG, env={"PRISM_CONTROLLER_ID": name})
    app.cluster.store = store
    return app


class XidDatapath(FakeDatapath):
    """Numbers what it sends, as Ryu's Datapath does (replies are matched by xid)."""

    def send_msg(self, message) -> None:
        message.set_xid(len(self.sent) + 1)
        super().send_msg(message)


def connect(app):
    datapath = XidDatapath(1)
    app.switch_features_handler(SimpleNamespace(msg=SimpleNamespace(datapath=datapath)))
    return datapath


def sent_of(datapath, kind):
    return [m for m in datapath.sent if type(m).__name__ == kind]


@pytest.fixture
def pair(tmp_path, monkeypatch):
    store = FakeStore()
    apps = {name: make_app(tmp_path, monkeypatch, name, store) for name in ("ctl1", "ctl2")}
    datapaths = {name: connect(app) for name, app in apps.items()}
    for _ in range(2):  # each sees the other's lease key from the second round on
        for app in apps.values():
            app.cluster.step()
    return store, apps, datapaths


def test_exactly_one_controller_claims_the_switch_with_the_claim_revision_as_generation(pair):
    store, apps, datapaths = pair
    masters = [n for n, dp in datapaths.items()
               if any(m.role == OFP.OFPCR_ROLE_MASTER for m in sent_of(dp, "OFPRoleRequest"))]
    slaves = [n for n, dp in datapaths.items()
              if any(m.role == OFP.OFPCR_ROLE_SLAVE for m in sent_of(dp, "OFPRoleRequest"))]
    # the first round may claim before the other controller was seen; the last claim decides
    last = {n: sent_of(dp, "OFPRoleRequest")[-1] for n, dp in datapaths.items()}
    assert sorted(m.role for m in last.values()) == [OFP.OFPCR_ROLE_MASTER, OFP.OFPCR_ROLE_SLAVE]
    master = next(n for n, m in last.items() if m.role == OFP.OFPCR_ROLE_MASTER)
    claim = next(v for k, v in store.kv.items() if "/masters/" in k)
    assert last[master].generation_id == claim[1] and master in claim[0]
    assert masters and slaves


def test_a_new_master_reads_the_switch_holds_packet_ins_then_converges_and_handles_them(pair):
    store, apps, datapaths = pair
    name = next(n for n, dp in datapaths.items()
                if sent_of(dp, "OFPRoleRequest")[-1].role == OFP.OFPCR_ROLE_MASTER)
    app, datapath = apps[name], datapaths[name]
    request = sent_of(datapath, "OFPRoleRequest")[-1]
    app.role_reply_handler(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, role=OFP.OFPCR_ROLE_MASTER, generation_id=request.generation_id)))
    # fencing (issue 10): directory and profiles go out under the claim's etcd revision, above any older master's
    assert app.generation == request.generation_id > 0
    groups_request = sent_of(datapath, "OFPGroupDescStatsRequest")[-1]
    flows_request = sent_of(datapath, "OFPFlowStatsRequest")[-1]
    frame = oxm.to_frame(oxm.udp_packet("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2",
                                        4000, 53, b"q"))
    app.packet_in_handler(_packet_in(datapath, 4, TABLE_FSC, frame))
    assert not sent_of(datapath, "OFPPacketOut")  # held while the tables are read
    app.group_desc_handler(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, xid=groups_request.xid,
                                                               flags=0, body=[])))
    app.takeover_flow_stats_handler(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, xid=flows_request.xid,
                                                                        flags=0, body=[])))
    # an empty switch: converged from scratch, then the held packet-in handled
    assert any(m.command == OFP.OFPFC_DELETE for m in sent_of(datapath, "OFPFlowMod"))
    assert sent_of(datapath, "OFPPacketOut") and app.cluster.may_send(1)
    # new flows never wait for etcd: a hundred packet-ins, not one etcd call
    calls = store.calls
    for port in range(5000, 5100):
        app.packet_in_handler(_packet_in(datapath, 4, TABLE_FSC, oxm.to_frame(oxm.udp_packet(
            "02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", port, 53, b"q"))))
    assert store.calls == calls and len(app.directors[1].flows) == 101
    app.cluster.step()  # publishes the new group's numbering
    assert any("/groups/" in k for k in store.kv)


def test_with_etcd_unreachable_roles_are_kept_and_said(pair):
    store, apps, datapaths = pair
    roles = {n: dict(a.cluster.mastership.roles) for n, a in apps.items()}
    store.down = True
    for app in apps.values():
        app.cluster.step()
        status = app.cluster.status()
        assert not status["etcd_reachable"] and "refused" in status["etcd_error"]
    assert {n: dict(a.cluster.mastership.roles) for n, a in apps.items()} == roles
    store.down = False
    for app in apps.values():
        app.cluster.step()
        assert app.cluster.status()["etcd_reachable"]


def test_only_the_master_of_a_cells_switch_sends_it_management_messages(pair):
    from prism.director.actions import MgmtMessage

    store, apps, datapaths = pair
    sent = {}
    for name, app in apps.items():
        app.channel = SimpleNamespace(send=lambda item, name=name: sent.setdefault(name, []).append(item))
        app.cluster.ready = {1} if name == "ctl1" else set()
        app.send_outgoing([MgmtMessage("cell1", {"type": "profiles"})])
    assert list(sent) == ["ctl1"] and apps["ctl2"].unsent["mgmt_not_master"] == 1


def test_a_takeover_whose_replies_do_not_come_asks_again(pair, monkeypatch):
    from ryu_apps import cluster as cluster_module

    store, apps, datapaths = pair
    name = next(n for n, dp in datapaths.items()
                if sent_of(dp, "OFPRoleRequest")[-1].role == OFP.OFPCR_ROLE_MASTER)
    app, datapath = apps[name], datapaths[name]
    request = sent_of(datapath, "OFPRoleRequest")[-1]
    app.role_reply_handler(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, role=OFP.OFPCR_ROLE_MASTER, generation_id=request.generation_id)))
    assert len(sent_of(datapath, "OFPGroupDescStatsRequest")) == 1
    monkeypatch.setattr(cluster_module, "ADOPTION_RETRY_S", 0.0)
    app.cluster.step()
    assert len(sent_of(datapath, "OFPGroupDescStatsRequest")) == 2
    assert app.cluster.counts["adoption_retries"] == 1


def test_a_master_whose_switch_was_claimed_after_it_claims_again_with_a_newer_generation(pair):
    from prism.cluster.shared_state import claim_key, encode_claim

    store, apps, datapaths = pair
    name = next(n for n, dp in datapaths.items()
                if sent_of(dp, "OFPRoleRequest")[-1].role == OFP.OFPCR_ROLE_MASTER)
    app, datapath = apps[name], datapaths[name]
    request = sent_of(datapath, "OFPRoleRequest")[-1]
    app.role_reply_handler(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, role=OFP.OFPCR_ROLE_MASTER, generation_id=request.generation_id)))
    other = next(n for n in apps if n != name)
    rival = store.put(claim_key("prism", 1), encode_claim(other))  # a claim made on a passing, different view
    app.cluster.step()
    again = sent_of(datapath, "OFPRoleRequest")[-1]
    assert again.role == OFP.OFPCR_ROLE_MASTER and again.generation_id > rival
    assert app.cluster.counts["superseded"] == 1
