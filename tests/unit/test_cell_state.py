"""Tests for the cell's state socket, ``prism cell-state`` and ``prism cell`` argument checks."""

import json
import socket
import threading
import time

import pytest

from cell_helpers import Conversation
from prism import cli
from prism.cell.cell import Cell
from prism.cell.io import CellIOError
from prism.cell.main_state import format_state
from prism.cell.state_server import StateServer, default_state_socket, read_state
from prism.flows.identity import TCP_ACK


def _busy_cell():
    cell = Cell("c7")
    conv = Conversation()
    for info in conv.handshake():
        cell.tracker.process(info, False, 10.0)
    cell.handle_frame(Conversation(client_port=1234).frame(True, TCP_ACK, b"x"), 11.0)
    return cell


def _serve_in_background(server, clients=1):
    def serve():
        deadline = time.monotonic() + 5
        while server.served < clients and time.monotonic() < deadline:
            server.serve_pending()
            time.sleep(0.005)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_state_server_answers_each_client_with_the_current_document(tmp_path):
    cell = _busy_cell()
    path = tmp_path / "cell.sock"
    server = StateServer(path, lambda: cell.state_document(12.0, interface="c7-eth0"))
    try:
        thread = _serve_in_background(server, clients=2)
        first = read_state(path)
        second = read_state(path)
        thread.join()
    finally:
        server.close()
    assert first == second
    assert first["cell_id"] == "c7" and first["interface"] == "c7-eth0"
    assert first["counters"]["dropped_no_state"] == 1
    assert first["flows"][0]["state"] == "ESTABLISHED"
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "cell.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed cell's leftover
    server = StateServer(path, dict)
    try:
        with pytest.raises(CellIOError, match="already running"):
            StateServer(path, dict)
    finally:
        server.close()
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(CellIOError, match="not a socket"):
        StateServer(regular, dict)


def test_close_leaves_a_socket_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "cell.sock"
    server = StateServer(path, dict)
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        server.close()
        assert path.exists()
    finally:
        other.close()


def test_default_state_socket_names_the_cell():
    assert default_state_socket("c1") == "/tmp/prism-cell-c1.sock"


def test_format_state_shows_counters_reasons_and_flows():
    text = format_state(_busy_cell().state_document(12.0, interface="c7-eth0"))
    assert "cell c7 on c7-eth0 (loose), 1 flows" in text
    assert "dropped: no_state 1" in text
    assert "tcp 10.0.0.1:40000 <-> 10.0.0.2:80" in text and "ESTABLISHED" in text


def test_cell_state_command_prints_json_or_text(tmp_path, capsys):
    cell = _busy_cell()
    path = tmp_path / "cell.sock"
    server = StateServer(path, lambda: cell.state_document(12.0))
    try:
        thread = _serve_in_background(server, clients=2)
        assert cli.main(["cell-state", str(path), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert cli.main(["cell-state", str(path)]) == 0
        assert "ESTABLISHED" in capsys.readouterr().out
        thread.join()
    finally:
        server.close()
    assert document["counters"]["primary_packets"] == 1
    assert cli.main(["cell-state", str(path)]) == 1
    assert "cannot read a cell's state" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--interface", "x", "--cell-id", "c1", "--mirror-mac", "02:00"], "--mirror-mac"),
    (["--interface", "x", "--cell-id", "../c1"], "cell id"),
    (["--interface", "x", "--cell-id", "c1", "--strict", "--loose"], "not allowed"),
], ids=["mac", "cell-id", "strict-and-loose"])  # fmt: skip
def test_cell_command_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cell", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cell_command_reports_a_missing_interface(capsys):
    assert cli.main(["cell", "--interface", "prismnosuch0", "--cell-id", "c1"]) == 1
    assert "no interface 'prismnosuch0'" in capsys.readouterr().err
