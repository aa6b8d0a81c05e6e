"""The core stays pure: no module under prism/ pulls in ryu, eventlet or mininet, or reads the clock/env.

Import statements (top level and inside functions) are checked by import-linter's
contracts (.importlinter, run by tests/unit/test_layers.py). What stays here is what
it cannot see: what importing a module pulls in at run time, through third-party
packages too, and reads of the clock and the environment.
"""

import ast
import json
import pathlib
import pkgutil
import subprocess
import sys

import prism

REPO = pathlib.Path(__file__).resolve().parents[2]
PRISM_DIR = REPO / "prism"
FORBIDDEN_PACKAGES = ("ryu", "eventlet", "mininet")
#: Calls the decision core must not make: time and configuration come in as arguments.
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("os", "getenv")}
FORBIDDEN_ATTRIBUTES = {("os", "environ")}


#: The cell's I/O: its sockets, event loop, process and state server. The rest of prism/cell
#: (packet logic, connection tracking, records, the SMM) decides, and gets ``now`` passed in.
CELL_IO_MODULES = {"io", "loop", "main", "main_state", "state_server", "smm_io"}


def is_io_module(path: pathlib.Path) -> bool:
    """Modules allowed to read the clock and the environment: the cell's I/O and command lines."""
    relative = path.relative_to(PRISM_DIR)
    if relative.parts[0] == "cell":
        return path.stem in CELL_IO_MODULES
    return "cli" in path.stem or path.stem.startswith("main")


def test_the_pure_cell_modules_are_checked():
    checked = {p.stem for p in python_files() if p.parent.name == "cell" and not is_io_module(p)}
    assert {"cell", "conntrack", "smm"} <= checked


def all_modules():
    walked = (info.name for info in pkgutil.walk_packages(prism.__path__, prefix="prism."))
    return ["prism", *sorted(walked)]


def python_files():
    return sorted(p for p in PRISM_DIR.rglob("*.py") if "__pycache__" not in p.parts)


IMPORT_CHECK = f"""
import importlib, json, sys, traceback
forbidden = {FORBIDDEN_PACKAGES!r}
report = {{}}
for name in json.loads(sys.argv[1]):
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except Exception:
        report[name] = "import failed: " + traceback.format_exc(limit=3)
        continue
    pulled = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in forbidden)
    if pulled:
        report[name] = "pulled in " + ", ".join(pulled)
print(json.dumps(report))
"""


def test_every_module_is_found():
    modules = all_modules()
    for expected in ("prism.flows.identity", "prism.placement.ring", "prism.placement.profiles", "prism.config.load", "prism.cli"):
        assert expected in modules
    assert len(modules) == len(python_files()), "a file under prism/ is not importable as a module"


def test_importing_every_module_pulls_in_no_framework():
    modules = all_modules()
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, json.dumps(modules)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {}, "\n".join(f"{name}: {problem}" for name, problem in report.items())


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return tuple(reversed(parts))
    return ()


def test_core_reads_no_clock_and_no_environment():
    offenders = []
    for path in python_files():
        if is_io_module(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func)[-2:] in FORBIDDEN_CALLS:
                called = ".".join(_dotted(node.func))
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: calls {called}()")
            elif isinstance(node, ast.Attribute) and _dotted(node)[-2:] in FORBIDDEN_ATTRIBUTES:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: reads {'.'.join(_dotted(node))}")
            elif isinstance(node, ast.ImportFrom) and node.module in ("time", "os"):
                for alias in node.names:
                    if (node.module, alias.name) in FORBIDDEN_CALLS | FORBIDDEN_ATTRIBUTES:
                        offenders.append(
                            f"{path.relative_to(REPO)}:{node.lineno}: imports {node.module}.{alias.name}"
                        )
    assert offenders == [], "time and configuration come in as arguments:\n" + "\n".join(offenders)
