"""``prism demo``'s scenario end to end: the primary's link goes down mid-transfer and TCP survives."""

from __future__ import annotations

import pytest

from mininet_topos.demo import DemoOptions, format_report, run_demo


def test_demo_tcp_survives_primary_link_failure_and_reports_it(ovs, tmp_path):
    report = run_demo(DemoOptions(cells=3, clients=2, replication_factor=1, duration_s=6.0,
                                  fail_at_s=2.0, workdir=tmp_path / "demo"))
    text = format_report(report)
    assert report["failed_cell"] in report["per_cell"], text
    assert report["tcp_survived"], text
    assert report["tcp"]["bytes_after_failure"] > 0, text
    assert report["interruption_ms"] is not None, text
    # Every UDP flow reached the server through a cell. A datagram on its way
    # to (or inside) the failed cell when its link went down is lost: at most
    # one per flow. A flow the policy left unmirrored on the failed cell also
    # loses what comes until the controller moves it: a few datagrams more.
    assert report["udp_flows_received"] == 6, text
    lost_allowed = 6 + 10 * (report["state_lost_flows"] or 0)
    assert report["udp_datagrams_received"] >= 240 - lost_allowed, text
    # rf 1: each flow has a mirror, so some cell absorbed marked copies.
    assert sum(cell["mirror_packets"] for cell in report["per_cell"].values()) > 0, text
    # The mirror that took over forwarded traffic after the failure.
    survivors = [name for name in report["per_cell"] if name != report["failed_cell"]]
    assert sum(report["per_cell"][name]["forwarded"] for name in survivors) > 0, text
    assert report["groups"] >= 1, text
    # The 1 ms probe ran through the failed cell and saw the failure (BFD is on by default).
    probe = report["probe"]
    assert {"rate_hz", "max_gap_ms", "lost"} <= set(probe) and probe["rate_hz"] == 1000, text
    assert probe["primary"] == report["failed_cell"] and probe["max_gap_ms"] is not None, text
    assert report["options"]["bfd"] is not None, text


@pytest.mark.parametrize("kind", ["link", "process"])
def test_demo_with_the_shipped_configuration_protects_tcp_at_a_tenth_of_the_copies(ovs, tmp_path, kind):
    """``make demo``: the shipped configuration's policy (examples/prism.yaml); TCP survives both
    failures with no flow's state lost, and the mirrors receive at most a tenth as many copies as
    the primaries forward (issue 8's target)."""
    report = run_demo(DemoOptions(cells=3, clients=2, replication_factor=1, duration_s=6.0, fail_at_s=2.0,
                                  fail_primary=kind, prediction=True, workdir=tmp_path / "demo"))  # fmt: skip
    text = format_report(report)
    assert report["tcp_survived"] and report["tcp"]["bytes_after_failure"] > 0, text
    assert report["state_lost_flows"] == 0, text
    assert report["primary_packets"] > 1000, text
    assert report["mirror_packets"] * 10 <= report["primary_packets"], text
    assert report["udp_flows_received"] == 6, text
