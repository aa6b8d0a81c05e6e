"""Tests for the SMM's command-line options of ``prism cell``, its address parsing and its UDP socket."""

import select
import time

import pytest

from prism import cli
from prism.cell.cell import Cell
from prism.cell.io import CellIOError
from prism.cell.main import cell_state_document
from prism.cell.main_state import format_state
from prism.cell.smm import StateMirroringModule
from prism.cell.smm_io import UdpTransport, parse_address


@pytest.mark.parametrize("text, expected", [
    ("172.30.0.11", ("172.30.0.11", 7700)),
    ("172.30.0.11:7701", ("172.30.0.11", 7701)),
    ("[2001:db8::1]:9", ("2001:db8::1", 9)),
    ("2001:db8::1", ("2001:db8::1", 7700)),
])  # fmt: skip
def test_parse_address(text, expected):
    assert parse_address(text, 7700) == expected


@pytest.mark.parametrize("text, message", [
    ("cell1:7700", "not an IP address"), ("10.0.0.1:0", "port"), ("10.0.0.1:x", "port"),
])  # fmt: skip
def test_parse_address_refuses_names_and_bad_ports(text, message):
    with pytest.raises(ValueError, match=message):
        parse_address(text, 7700)


@pytest.mark.parametrize("argv, message", [
    (["--mgmt-listen", "cell1"], "not an IP address"),
    (["--controller", "10.0.0.1:99999"], "port"),
], ids=["mgmt-name", "controller-port"])  # fmt: skip
def test_cell_command_rejects_bad_management_addresses(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cell", "--interface", "x", "--cell-id", "c1", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--controller", "172.30.0.254"], "--controller needs --mgmt-listen"),
    (["--mgmt-listen", "127.0.0.1", "--heartbeat-interval", "0"], "--heartbeat-interval must be positive"),
], ids=["controller-alone", "heartbeat-interval"])  # fmt: skip
def test_cell_command_checks_option_combinations(argv, message, capsys):
    assert cli.main(["cell", "--interface", "x", "--cell-id", "c1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_udp_transport_reports_an_address_it_cannot_bind():
    with pytest.raises(CellIOError, match="cannot bind the management socket to 192.0.2.77:7700"):
        UdpTransport(("192.0.2.77", 7700))


def test_udp_transport_on_loopback_sends_and_receives():
    first, second = UdpTransport(("127.0.0.1", 0)), UdpTransport(("127.0.0.1", 0))
    try:
        assert second.recv() is None
        assert first.sendto(b"hello", second.address)
        select.select([second.fileno()], [], [], 5.0)
        assert second.recv() == (b"hello", first.address)
    finally:
        first.close()
        second.close()


def test_the_state_document_and_cell_state_show_replication():
    cell = Cell("c1")
    smm = StateMirroringModule(cell, transport=None, controller=("172.30.0.254", 7600))
    smm.counters.records_sent = 12
    document = cell_state_document(cell, smm, "c1-eth0", time.time())
    assert document["replication"]["counters"]["records_sent"] == 12
    assert document["replication"]["controller"] == ["172.30.0.254", 7600]
    assert "replication: sent 12 records" in format_state(document)
    assert "replication" not in cell_state_document(cell, None, "c1-eth0", time.time())
