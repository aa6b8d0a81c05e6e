"""``prism demo`` cleans up everything it started when interrupted with Ctrl-C mid-transfer.

Ctrl-C is SIGINT to the terminal's foreground process group: the demo runs in a
session of its own and the test signals that group once the TCP transfer runs.
Everything is identified by what the demo made, not by name (another test may
build a network with the same names once the demo releases the network lock):
its descendant processes by PID and start time, its bridge by OVSDB uuid, its
interfaces by ifindex.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from mininet_topos.prism_topo import MGMT_BRIDGE, SWITCH_NAME
from tests.support import poll

#: Long enough that the interrupt lands mid-transfer.
DEMO_ARGS = ("--duration", "60", "--fail-at", "50", "--cells", "2", "--clients", "1")
START_TIMEOUT_S = 240.0  # includes waiting for the network lock
EXIT_TIMEOUT_S = 60.0

Process = Tuple[int, str]  # pid, start time (field 22 of /proc/PID/stat): survives PID reuse


def _stat(pid: int) -> Optional[Tuple[int, str, str]]:
    """(parent pid, start time, state) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], fields[0]


def descendants(root: int) -> Dict[int, str]:
    """Every live descendant of ``root``: pid -> start time."""
    children: Dict[int, list] = {}
    starts: Dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[1]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = starts[pid]
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int, start: str) -> bool:
    """The same process (not a reused PID) still runs (a zombie counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == start and stat[2] != "Z"


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def bridge_uuid() -> str:
    result = subprocess.run(["ovs-vsctl", "--if-exists", "get", "Bridge", SWITCH_NAME, "_uuid"],
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip()


def root_interfaces() -> Dict[str, int]:
    """Interfaces of the root namespace that a PRISM network makes: name -> ifindex."""
    found = {}
    for path in Path("/sys/class/net").iterdir():
        if path.name == MGMT_BRIDGE or path.name.startswith(f"{SWITCH_NAME}-eth"):
            with contextlib.suppress(OSError, ValueError):
                found[path.name] = int((path / "ifindex").read_text())
    return found


@pytest.mark.timeout(480)
def test_ctrl_c_mid_transfer_leaves_no_process_bridge_or_interface(ovs, tmp_path):
    prism = Path(sys.executable).with_name("prism")
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    demo = subprocess.Popen([str(prism), "demo", "--workdir", str(tmp_path / "demo"), *DEMO_ARGS],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    log.close()
    made: Dict[int, str] = {}
    try:
        def transfer_running():
            return any("iperf3 -c" in cmdline(pid) for pid in descendants(demo.pid)) or demo.poll() is not None

        assert poll(transfer_running, timeout=START_TIMEOUT_S, interval=0.5), "the demo never started its transfer"
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
        made = descendants(demo.pid)
        uuid, interfaces = bridge_uuid(), root_interfaces()
        assert uuid and any(name.startswith(f"{SWITCH_NAME}-eth") for name in interfaces), interfaces
        assert any("ryu-manager" in cmdline(pid) for pid in made) and any(" cell " in cmdline(pid) for pid in made)

        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        demo.wait(timeout=EXIT_TIMEOUT_S)
        output = (tmp_path / "demo.log").read_text(errors="replace")
        assert demo.returncode != 0, output

        left = poll(lambda: not [p for p, s in made.items() if alive(p, s)], timeout=10, interval=0.2)
        assert left, "still running: " + ", ".join(
            f"{p} {cmdline(p)}" for p, s in made.items() if alive(p, s)
        )
        assert bridge_uuid() != uuid, f"bridge {SWITCH_NAME} (uuid {uuid}) is still there"
        still = {name: index for name, index in root_interfaces().items() if interfaces.get(name) == index}
        assert still == {}, f"interfaces left behind: {still}"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid, start in made.items():  # anything the demo left: ended by PID
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
