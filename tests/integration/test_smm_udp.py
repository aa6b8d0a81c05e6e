"""State Mirroring Modules over real UDP sockets on loopback: two cells' loops in threads and a fake controller."""

from __future__ import annotations

import pytest

from tests.integration.smm_cells import PROFILE, FakeController, RunningCell, feed_flows, records_of, start_cells, wait_for

FLOWS = 200
HEARTBEATS_WANTED = 10


@pytest.fixture
def two_cells(tmp_path):
    controller = FakeController()
    cells = {cell_id: RunningCell(cell_id, controller.address, tmp_path / f"{cell_id}.sock")
             for cell_id in ("c1", "c2")}  # fmt: skip
    try:
        start_cells(controller, cells, {PROFILE: ("c1", ["c2"])})
        yield controller, cells
    finally:
        for running in cells.values():
            running.stop()
        controller.close()


def test_two_cells_replicate_over_loopback_udp_and_beat_to_the_controller(two_cells):
    controller, cells = two_cells
    feed_flows(controller, cells, FLOWS, "c1", ["c2"])

    def converged():
        primary = records_of(cells["c1"])
        return len(primary) == FLOWS and primary == records_of(cells["c2"])

    wait_for(converged, controller, "the mirror to hold the primary's records")
    wait_for(lambda: len(controller.of_type("heartbeat", "c1")) >= HEARTBEATS_WANTED, controller,
             "heartbeats")  # fmt: skip
    assert len(cells["c1"].port.sent) == 4 * FLOWS  # every primary copy forwarded
    mirror_state = cells["c2"].state()
    tokens = {flow["token"] for flow in mirror_state["flows"]}
    assert 0 not in tokens and len(tokens) == FLOWS  # learnt through replication only
    assert mirror_state["replication"]["counters"]["records_applied"] >= FLOWS
    beats = controller.of_type("heartbeat", "c1")
    assert [b["seq"] for b in beats] == sorted(b["seq"] for b in beats) and beats[0]["seq"] == 1
    assert beats[-1]["flows"] == FLOWS
    assert beats[-1]["replication"]["records_sent"] >= FLOWS
    # the seed of a new mirror: c1 snapshots the profile to c2 and reports seeded
    controller.send({"type": "seed", "profile_id": PROFILE, "target": "c2"}, cells["c1"].address)
    wait_for(lambda: controller.of_type("seeded"), controller, "seeded")
    (seeded,) = controller.of_type("seeded")
    assert seeded == {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c2", "flows": FLOWS}
