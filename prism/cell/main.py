"""``prism cell``: run an exception-path cell on one interface until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from prism.cell.bfd import OVERLOADED, BfdSession, BfdSettings, BfdSpeaker, OverloadGuard
from prism.cell.cell import Cell, TickReport
from prism.cell.conntrack import DEFAULT_MAX_FLOWS, ConnTracker, TrackerConfig
from prism.cell.smm_view import DEFAULT_MAX_ASSIGNMENTS
from prism.cell.io import CellIOError, PacketSocket
from prism.cell.loop import DEFAULT_TICK_S, CellLoop
from prism.cell.smm import SmmSettings, StateMirroringModule
from prism.cell.smm_io import UdpTransport, attach, parse_address
from prism.cell.state_server import StateServer, default_state_socket
from prism.flows.identity import mac_to_bytes, mac_to_str
from prism.mgmt.protocol import CELL_MGMT_PORT, CONTROLLER_MGMT_PORT, HEARTBEAT_INTERVAL_S
from prism.mgmt.auth import DEFAULT_MGMT_KEY_ENV, MgmtAuth, MgmtKeyError, key_bytes, read_key_file
from prism.openflow.changes import MIRROR_MAC

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
    smm.add_argument("--controller", type=_address(CONTROLLER_MGMT_PORT), action="append",
                     metavar="IP[:PORT]",
                     help=f"the controller's management address: heartbeats go there, control "
                          f"messages only come from there (default port {CONTROLLER_MGMT_PORT}); "
                          f"repeat it for each of several controllers; needs --mgmt-listen")  # fmt: skip
    smm.add_argument("--mgmt-key-file", metavar="PATH",
                     help=f"file holding the deployment's management key (the controller's "
                          f"management.key_file); default: the environment variable {DEFAULT_MGMT_KEY_ENV}")  # fmt: skip
    smm.add_argument("--heartbeat-interval", type=float, default=HEARTBEAT_INTERVAL_S,
                     metavar="SECONDS",
                     help=f"period of heartbeats to the controller (default {HEARTBEAT_INTERVAL_S})")  # fmt: skip
    bfd = parser.add_argument_group(
        "BFD with the switch on --interface (the switch port needs bfd:enable=true and the same intervals)")
    bfd.add_argument("--bfd", action="store_true",
                     help="speak BFD (RFC 5880 asynchronous mode) from the packet loop; SIGUSR1 then asks "
                          "the switch to stop using this cell (draining), SIGUSR2 to use it again")  # fmt: skip
    bfd.add_argument("--bfd-min-tx", type=int, default=BfdSettings.min_tx_ms, metavar="MS",
                     help=f"desired transmit interval, ms (default {BfdSettings.min_tx_ms})")
    bfd.add_argument("--bfd-min-rx", type=int, default=BfdSettings.min_rx_ms, metavar="MS",
                     help=f"required receive interval, ms (default {BfdSettings.min_rx_ms})")
    bfd.add_argument("--bfd-mult", type=int, default=BfdSettings.mult, metavar="N",
                     help=f"detection multiplier (default {BfdSettings.mult}): the switch declares this "
                          f"cell down after N intervals without a packet")  # fmt: skip
    bfd.add_argument("--overload-ticks", type=int, default=0, metavar="N",
                     help="ask the switch to stop using this cell (BFD Concatenated Path Down, reason "
                          "'overloaded') after N ticks in a row in which the kernel dropped frames for it, "
                          "until 2 s pass without a drop (default 0: never)")  # fmt: skip
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
    bfd_settings = None
    if args.bfd:
        try:
            bfd_settings = BfdSettings(args.bfd_min_tx, args.bfd_min_rx, args.bfd_mult)
        except ValueError as error:
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
    speaker = None
    if bfd_settings is not None:
        try:
            mac = interface_mac(args.interface)
        except (OSError, ValueError) as error:
            print(f"prism cell: cannot read the MAC of {args.interface} for BFD: {error}", file=sys.stderr)
            loop.close()
            port.close()
            return 1
        session = BfdSession(bfd_settings, random.SystemRandom().randrange(1, 2**32), time.monotonic())
        speaker = BfdSpeaker(session, port.send, mac)
        loop.set_bfd(speaker)
        if args.overload_ticks > 0:
            cell.add_tick_hook(_overload_hook(OverloadGuard(args.overload_ticks), port, speaker, lambda: smm))
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
        server = StateServer(state_path, lambda: cell_state_document(cell, smm, args.interface, loop.clock(), speaker))
        loop.add_reader(server.fileno(), server.serve_pending)
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: loop.stop())
        if speaker is not None:
            for signum, reason in ((signal.SIGUSR1, DRAINING), (signal.SIGUSR2, None)):
                previous[signum] = signal.signal(signum, _path_down_handler(speaker, smm, reason))
            LOG.info("cell %s: BFD on %s (min_tx %d ms, min_rx %d ms, mult %d)", args.cell_id, args.interface,
                     bfd_settings.min_tx_ms, bfd_settings.min_rx_ms, bfd_settings.mult)  # fmt: skip
        LOG.info("cell %s on %s (%s, mirror MAC %s, rcvbuf %d), state on %s",
                 args.cell_id, args.interface, "strict" if args.strict else "loose",
                 cell.mirror_mac, port.rcvbuf, state_path)  # fmt: skip
        if transport is not None:
            LOG.info("cell %s: management on %s:%d, controller %s, heartbeats every %g s",
                     args.cell_id, *transport.address,
                     ", ".join("%s:%d" % c for c in args.controller) if args.controller
                     else "none (no heartbeats)",
                     args.heartbeat_interval)  # fmt: skip
        loop.run()
    except CellIOError as error:
        print(f"prism cell: {error}", file=sys.stderr)
        return 1
    finally:
        if speaker is not None:  # a cell stopped on purpose leaves the switch at once, not after mult intervals
            speaker.farewell()
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


def cell_state_document(cell: Cell, smm, interface: str, now: float, speaker: Optional[BfdSpeaker] = None) -> dict:
    """The state document as of ``now`` (the cell loop's clock): the cell's, plus ``replication`` (the SMM's)
    and ``bfd`` when it runs them."""
    extra = {"interface": interface}
    if smm is not None:
        extra["replication"] = smm.describe()
    if speaker is not None:
        extra["bfd"] = speaker.describe(time.monotonic())
    return cell.state_document(now, **extra)


#: ``path_down`` reason of a cell asked to drain (SIGUSR1).
DRAINING = "draining"


def _overload_hook(guard: OverloadGuard, port, speaker: BfdSpeaker, smm_of):
    """A tick hook: the packet socket's drops decide whether to withdraw as ``overloaded`` (not over a drain)."""

    def check(cell: Cell, report: TickReport) -> None:
        overloaded = guard.update(port.take_drops(), time.monotonic())
        current = speaker.session.path_down_reason
        if current == DRAINING or (current == OVERLOADED) == overloaded:
            return
        reason = OVERLOADED if overloaded else None
        speaker.session.set_path_down(reason)
        smm = smm_of()
        if smm is not None:
            smm.extra_report["path_down"] = reason
        LOG.warning("cell %s: %s", cell.cell_id, "overloaded (the kernel drops frames): asking the switch to "
                    "stop using this cell" if overloaded else "no longer overloaded: asking the switch to use it")

    return check


def _path_down_handler(speaker: BfdSpeaker, smm, reason: Optional[str]):
    """A signal handler that sets the BFD path-down reason (None: forward again) and reports it in heartbeats."""

    def handle(*_args) -> None:
        speaker.session.set_path_down(reason)
        if smm is not None:
            smm.extra_report["path_down"] = reason
        if reason:
            LOG.warning("BFD: asking the switch to stop using this cell (%s)", reason)
        else:
            LOG.warning("BFD: asking the switch to use this cell again")

    return handle


def interface_mac(interface: str) -> bytes:
    """The MAC address of ``interface`` (from sysfs; OSError or ValueError if it has none)."""
    text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    value = bytes.fromhex(text.replace(":", ""))
    if len(value) != 6:
        raise ValueError(f"{interface} has no Ethernet address ({text!r})")
    return value
