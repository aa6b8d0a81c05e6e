"""``prism cell``: run an exception-path cell on one interface until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time

from prism.cell.cell import Cell, TickReport
from prism.cell.conntrack import DEFAULT_MAX_FLOWS, ConnTracker, TrackerConfig
from prism.cell.smm_view import DEFAULT_MAX_ASSIGNMENTS
from prism.cell.io import CellIOError, PacketSocket
from prism.cell.loop import DEFAULT_TICK_S, CellLoop
from prism.cell.smm import SmmSettings, StateMirroringModule
from prism.cell.smm_io import UdpTransport, attach, parse_address
from prism.cell.state_server import StateServer, default_state_socket
from prism.flows import mac_to_bytes, mac_to_str
from prism.config_types import DEFAULT_MGMT_KEY_ENV
from prism.mgmt import CELL_MGMT_PORT, CONTROLLER_MGMT_PORT, HEARTBEAT_INTERVAL_S
from prism.mgmt_auth import MgmtAuth, MgmtKeyError, key_bytes, read_key_file
from prism.openflow import MIRROR_MAC

LOG = logging.getLogger("prism.cell")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SUMMARY_INTERVAL_S = 30.0  #: how often a running cell logs its counters
CELL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _cell_id(text: str) -> str:
    if not CELL_ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"cell id {text!r}: use letters, digits, '.', '_' or '-' (it names the state socket)"
        )
    return text


def _mac(text: str) -> str:
    try:
        return mac_to_str(mac_to_bytes(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--mirror-mac: {error}") from error


def _address(default_port: int):
    def parse(text: str):
        try:
            return parse_address(text, default_port)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``prism cell``."""
    parser.add_argument("--interface", required=True, help="interface to the switch (e.g. c1-eth0)")
    parser.add_argument("--cell-id", required=True, type=_cell_id, help="this cell's id")
    parser.add_argument("--state-socket", metavar="PATH",
                        help="UNIX socket serving the state table as JSON "
                             "(default /tmp/prism-cell-<id>.sock)")  # fmt: skip
    parser.add_argument("--mirror-mac", type=_mac, default=MIRROR_MAC,
                        help=f"destination MAC of mirror copies (default {MIRROR_MAC})")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="strict", action="store_true",
                      help="check TCP sequence/ack numbers against the windows seen")  # fmt: skip
    mode.add_argument("--loose", dest="strict", action="store_false",
                      help="check TCP flags and state only (default)")  # fmt: skip
    parser.set_defaults(strict=False)
    parser.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS, metavar="N",
                        help=f"flows tracked at most; new ones beyond are dropped (default {DEFAULT_MAX_FLOWS})")
    parser.add_argument("--max-tombstones", type=int, default=DEFAULT_MAX_FLOWS, metavar="N",
                        help=f"removed flows remembered at most (default {DEFAULT_MAX_FLOWS})")
    parser.add_argument("--max-assignments", type=int, default=DEFAULT_MAX_ASSIGNMENTS, metavar="N",
                        help=f"flow-to-profile assignments kept at most (default {DEFAULT_MAX_ASSIGNMENTS})")
    parser.add_argument("--tick-interval", type=float, default=DEFAULT_TICK_S, metavar="SECONDS",
                        help=f"period of expiry and replication batches (default {DEFAULT_TICK_S})")  # fmt: skip
    smm = parser.add_argument_group(
        "state mirroring (management network; without these the cell runs standalone)")
    smm.add_argument("--mgmt-listen", type=_address(CELL_MGMT_PORT),
                     metavar="IP[:PORT]",
                     help=f"this cell's management address: replication and control "
                          f"(default port {CELL_MGMT_PORT})")  # fmt: skip
    smm.add_argument("--controller", type=_address(CONTROLLER_MGMT_PORT),
                     metavar="IP[:PORT]",
                     help=f"the controller's management address: heartbeats go there, control "
                          f"messages only come from there (default port {CONTROLLER_MGMT_PORT}); "
                          f"needs --mgmt-listen")  # fmt: skip
    smm.add_argument("--mgmt-key-file", metavar="PATH",
                     help=f"file holding the deployment's management key (the controller's "
                          f"management.key_file); default: the environment variable {DEFAULT_MGMT_KEY_ENV}")  # fmt: skip
    smm.add_argument("--heartbeat-interval", type=float, default=HEARTBEAT_INTERVAL_S,
                     metavar="SECONDS",
                     help=f"period of heartbeats to the controller (default {HEARTBEAT_INTERVAL_S})")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper)


def _summary_hook(interval_s: float):
    next_log = [0.0]

    def log_summary(cell: Cell, report: TickReport) -> None:
        if report.now < next_log[0]:
            return
        next_log[0] = report.now + interval_s
        c = cell.counters()
        LOG.info("cell %s: %d flows, primary %d, mirror %d, forwarded %d, dropped %d, ignored %d",
                 cell.cell_id, c["flows_tracked"], c["primary_packets"], c["mirror_packets"],
                 c["forwarded"], c["dropped"], c["ignored"])  # fmt: skip

    return log_summary


def run(args: argparse.Namespace) -> int:
    """Run the cell until a signal; returns the exit code."""
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for option, value in (("--tick-interval", args.tick_interval),
                          ("--heartbeat-interval", args.heartbeat_interval), ("--max-flows", args.max_flows),
                          ("--max-tombstones", args.max_tombstones),
                          ("--max-assignments", args.max_assignments)):  # fmt: skip
        if value <= 0:
            print(f"prism cell: {option} must be positive", file=sys.stderr)
            return 2
    if args.controller is not None and args.mgmt_listen is None:
        print("prism cell: --controller needs --mgmt-listen (the address the controller and the "
              "other cells reach this cell at)", file=sys.stderr)  # fmt: skip
        return 2
    auth = None
    if args.mgmt_listen is not None:
        try:
            auth = MgmtAuth(_management_key(args.mgmt_key_file), args.cell_id)
        except MgmtKeyError as error:
            print(f"prism cell: {error}", file=sys.stderr)
            return 2
    state_path = args.state_socket or default_state_socket(args.cell_id)
    tracker = ConnTracker(TrackerConfig(strict=args.strict, max_flows=args.max_flows,
                                        max_tombstones=args.max_tombstones))  # fmt: skip
    cell = Cell(args.cell_id, tracker, args.mirror_mac)
    cell.add_tick_hook(_summary_hook(SUMMARY_INTERVAL_S))
    try:
        port = PacketSocket(args.interface)
    except CellIOError as error:
        print(f"prism cell: {error}", file=sys.stderr)
        return 1
    loop = CellLoop(cell, port, tick_interval_s=args.tick_interval)
    server = transport = smm = None
    previous = {}
    try:
        if args.mgmt_listen is not None:
            transport = UdpTransport(args.mgmt_listen)
            smm = StateMirroringModule(cell, transport, args.controller,
                                       SmmSettings(heartbeat_interval_s=args.heartbeat_interval,
                                                   max_assignments=args.max_assignments),
                                       auth=auth)  # fmt: skip
            attach(loop, smm, transport)
        server = StateServer(state_path, lambda: cell_state_document(cell, smm, args.interface))
        loop.add_reader(server.fileno(), server.serve_pending)
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: loop.stop())
        LOG.info("cell %s on %s (%s, mirror MAC %s, rcvbuf %d), state on %s",
                 args.cell_id, args.interface, "strict" if args.strict else "loose",
                 cell.mirror_mac, port.rcvbuf, state_path)  # fmt: skip
        if transport is not None:
            LOG.info("cell %s: management on %s:%d, controller %s, heartbeats every %g s",
                     args.cell_id, *transport.address,
                     "%s:%d" % args.controller if args.controller else "none (no heartbeats)",
                     args.heartbeat_interval)  # fmt: skip
        loop.run()
    except CellIOError as error:
        print(f"prism cell: {error}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server is not None:
            server.close()
        if transport is not None:
            transport.close()
        loop.close()
        port.close()
    counters = cell.counters()
    if smm is not None:
        counters.update(smm.replication_counters())
    LOG.info("cell %s stopped: %s", args.cell_id,
             ", ".join(f"{name} {value}" for name, value in counters.items() if value))  # fmt: skip
    return 0


def _management_key(path):
    """The key from ``--mgmt-key-file``, else from PRISM_MGMT_KEY (MgmtKeyError if neither works)."""
    if path:
        return read_key_file(path)
    text = os.environ.get(DEFAULT_MGMT_KEY_ENV, "")
    if not text.strip():
        raise MgmtKeyError(f"--mgmt-listen needs the deployment's management key: --mgmt-key-file PATH "
                           f"or the environment variable {DEFAULT_MGMT_KEY_ENV}")  # fmt: skip
    return key_bytes(text, f"the environment variable {DEFAULT_MGMT_KEY_ENV}")


def cell_state_document(cell: Cell, smm, interface: str) -> dict:
    """The state document: the cell's, plus ``replication`` (the SMM's) when it runs one."""
    extra = {"interface": interface}
    if smm is not None:
        extra["replication"] = smm.describe()
    return cell.state_document(time.time(), **extra)
