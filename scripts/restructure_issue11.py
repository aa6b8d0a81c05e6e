#!/usr/bin/env python3
"""Issue 11: move PRISM's flat ``prism/`` into subpackages that show the architecture.

Run at the root of a clean checkout (main after the other branches merged):

    python3 scripts/restructure_issue11.py --dry-run     # what it would do, changes nothing
    python3 scripts/restructure_issue11.py               # git mv + rewrite + new .importlinter
    python3 scripts/restructure_issue11.py --verify      # the same, then lint-imports and the unit tests

What it does, in order:

1. Refuses to run on a dirty tree, or when ``prism/`` holds a top-level module that
   neither the table below nor a prefix rule (``config_X`` -> ``prism.config.load.X``,
   ``sim_X`` -> ``prism.sim.X`` ...; printed as "by rule") places: it lists them, so
   that they get a row in MOVES (or KEEP) first. ``--leave-unknown`` leaves such
   modules where they are instead (reported again at the end, and the exhaustive
   layers contract then names them).
2. ``git mv`` of every module in MOVES (a row whose file is gone is skipped with a
   note), and a new ``__init__.py`` with a one-line docstring for each package.
   A moved module's ``Path(__file__).parents[k]`` / ``.parent.parent`` paths out of
   prism/ get one level more (any other use of ``__file__`` is reported).
3. Rewrites every reference in every tracked text file (Python, notebooks,
   Markdown, YAML, Makefile, shell, ini): dotted module names (imports, strings
   such as ``mock.patch`` targets, ``python -m``, the subcommand table of
   ``prism/cli.py``), ``from prism import X`` statements (split when their names
   move to different packages), and file paths ``prism/X.py``.
4. Benchmark scripts that now import ``testkit`` get the repository root on
   ``sys.path`` (``testkit`` is not installed: it is not part of the product).
5. Writes a new ``.importlinter`` (layers of the new packages, exhaustive; no
   cycle between packages; the forbidden contracts on the new names), warning if
   the old one had changed since issue 11 wrote it, and appends a code map (each
   package and its modules) to docs/architecture.md.
6. Reports what it did and, as ``CHECK:`` lines, any reference to an old name it
   could not rewrite.

Nothing is committed: review ``git status`` / ``git diff HEAD --stat -M``, then
``git add -u && git commit`` (the moves and the new __init__.py files are staged
by the script; ``git add -u`` adds the rewritten files).
The mapping is a table (MOVES) so that a module that appears later needs one row.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# --------------------------------------------------------------------------------------
# The table. Old module -> new module. A module not named here and not in KEEP stops
# the script (see --leave-unknown).
# --------------------------------------------------------------------------------------
MOVES: Dict[str, str] = {
    # OpenFlow change descriptions and the pipeline's constants (no framework).
    "prism.openflow.changes": "prism.openflow.changes.changes",
    # Flow identity and frame parsing; what a flow turned out to be.
    "prism.flows.identity": "prism.flows.identity.identity",
    "prism.flows.outcome": "prism.flows.identity.outcome",
    # Where a flow's state lives: the ring, and profiles (+ the controller's FSC copy).
    "prism.placement.ring": "prism.placement.ring",
    "prism.placement.profiles": "prism.placement.profiles",
    # Who gets a new flow's packets.
    "prism.policy.base": "prism.policy.base.base",
    "prism.policy.predictive": "prism.policy.base.predictive",
    "prism.policy.budget": "prism.policy.base.budget",
    # The Mirroring Director for one switch: FSC entries, groups, failover, repair, ends.
    "prism.director.core": "prism.director.core.core",
    "prism.director.groups": "prism.director.core.groups",
    "prism.director.failover": "prism.director.core.failover",
    "prism.director.repair": "prism.director.core.repair",
    "prism.director.flow_end": "prism.director.core.flow_end",
    "prism.director.actions": "prism.director.core.actions",
    # The controller across switches: cell health, views.
    "prism.control.plane": "prism.control.plane.plane",
    "prism.control.health": "prism.control.plane.health",
    # Configuration.
    "prism.config.load": "prism.config.load.load",
    "prism.config.cli": "prism.config.load.cli",
    "prism.config.mgmt": "prism.config.load.mgmt",
    "prism.config.schema": "prism.config.load.schema",
    "prism.config.telemetry": "prism.config.load.telemetry",
    "prism.config.types": "prism.config.load.types",
    # Telemetry and the flow-record schema every producer and the models share.
    "prism.telemetry.records": "prism.telemetry.rows.records",
    "prism.telemetry.rows": "prism.telemetry.rows.rows",
    "prism.telemetry.files": "prism.telemetry.rows.files",
    # Offline: captures and binetflow files -> flow records.
    "prism.trace.cli": "prism.trace.cli.cli",
    "prism.trace.binetflow": "prism.trace.cli.binetflow",
    "prism.trace.capture": "prism.trace.cli.capture",
    "prism.trace.linktypes": "prism.trace.cli.linktypes",
    "prism.trace.flowmeter": "prism.trace.cli.flowmeter",
    # Offline: the trace-driven simulator.
    "prism.sim.engine": "prism.sim.engine",
    "prism.sim.cli": "prism.sim.cli",
    "prism.sim.distributions": "prism.sim.distributions",
    "prism.sim.flows": "prism.sim.flows",
    "prism.sim.policies": "prism.sim.policies",
    "prism.sim.population": "prism.sim.population",
    "prism.sim.run": "prism.sim.run",
    "prism.sim.schedule": "prism.sim.schedule",
    # Modules the merges of issues 8, 9, 10 and 12 add (a row whose file is absent is skipped).
    "prism.policy.aging_features": "prism.policy.base.aging_features",  # the pure feature row (no pandas)
    "prism.policy.aging": "prism.policy.base.aging",
    "prism.sim.evaluation": "prism.sim.evaluation",  # pandas: offline, used by the simulator and models
    "prism.telemetry.training_groups": "prism.telemetry.rows.training_groups",  # which flow records trained a model
    "prism.director.flow_seeds": "prism.director.core.flow_seeds",
    "prism.config.bfd": "prism.config.load.bfd",
    "prism.config.etcd": "prism.config.load.etcd",
    "prism.placement.memory": "prism.placement.memory",
    "prism.placement.store": "prism.placement.store",
    "prism.openflow.refusals": "prism.openflow.changes.refusals",
    # The management network, below both the controller and the cells (both speak it).
    "prism.mgmt.protocol": "prism.mgmt.protocol.protocol",
    "prism.mgmt.auth": "prism.mgmt.protocol.auth",
    "prism.mgmt.generation": "prism.mgmt.protocol.generation",  # imported by the protocol (fencing)
    # Several controllers: below config (config_etcd reads mastership's defaults) and director.
    "prism.cluster.mastership": "prism.cluster.mastership",
    "prism.cluster.shared_state": "prism.cluster.shared_state",
    "prism.cluster.takeover": "prism.cluster.takeover",
    # Test tools, out of the product (not packaged): the fake switch, frame builders.
    "testkit.fakeswitch": "testkit.fakeswitch",
    "testkit.oxm": "testkit.oxm",
    "testkit.packets": "testkit.packets",
}

#: A top-level module that MOVES does not name but whose name starts with one of these
#: prefixes (e.g. a prism/config/bfd.py added by a merge) goes to that package, under
#: the rest of its name (prism.config.load.bfd); each such move is printed as "by rule".
PREFIX_RULES: Dict[str, str] = {
    "config_": "prism.config.load",
    "sim_": "prism.sim",
    "simulate_": "prism.sim",
    "telemetry_": "prism.telemetry.rows",
    "policy_": "prism.policy.base",
    "trace_": "prism.trace.cli",
    "director_": "prism.director.core",
    "control_": "prism.control.plane",
    "flows_": "prism.flows.identity",
    "ring_": "prism.placement",
    "openflow_": "prism.openflow.changes",
}

#: Modules that stay directly in prism/ (with __init__: 3 of the at most 6). The
#: management protocol becomes its own package (prism/mgmt): the controller (control)
#: and the cells (cell) both speak it, so it sits below both and neither owns it.
KEEP = {"prism", "prism.cli", "prism.atomic"}

#: One-line docstrings of the new packages.
PACKAGES: Dict[str, str] = {
    "prism.openflow.changes": "OpenFlow 1.3 as the core describes it: change descriptions and the pipeline's constants.",
    "prism.flows.identity": "Flows: frames parsed into canonical bidirectional flow keys, and what a flow turned out to be.",
    "prism.placement": "Where a flow's state lives: the cell ring and mirroring profiles.",
    "prism.policy.base": "Replication policies: which cells get a new flow's packets, within a budget.",
    "prism.director.core": "The Mirroring Director of one switch: FSC entries, profile groups, failover and repair.",
    "prism.control.plane": "The controller across switches: cell health, failover and the views the REST API shows.",
    "prism.config.load": "PRISM's YAML configuration: loading, checking every key with its line, and its types.",
    "prism.telemetry.rows": "Telemetry: flow records and switch statistics, as rows and crash-safe Parquet files.",
    "prism.trace.cli": "``prism trace``: captures and Argus binetflow files turned into flow records.",
    "prism.sim": "The trace-driven simulator: flows, cells and failures through the controller's own code.",
    "prism.mgmt.protocol": "The management network: its datagrams, their authentication, the controller's generation.",
    "prism.cluster": "Several controllers on one network: mastership of switches, shared state, takeover.",
    "testkit": "Test tools, not part of the product: a fake OpenFlow switch and well-formed test frames.",
}

#: The new .importlinter (written whole: contracts name the new packages).
IMPORTLINTER = """\
# PRISM's architecture as checked contracts (import-linter; `make test` runs
# `lint-imports` through tests/unit/test_layers.py).
#
# Every `ignore_imports` entry below is known debt, not an exemption: its comment
# says what removes it. An entry that no longer matches an import makes
# lint-imports fail, so paid-off debt has to be deleted from this file.

[importlinter]
root_packages =
    prism
    models
    ryu_apps
    mininet_topos
    testkit
include_external_packages = True
# `if TYPE_CHECKING:` imports are annotations, not dependencies.
exclude_type_checking_imports = True

[importlinter:contract:core-no-framework]
name = The core (prism) imports no controller or emulator framework, none of the shells, no test tool
type = forbidden
source_modules =
    prism
forbidden_modules =
    ryu
    eventlet
    mininet
    ryu_apps
    mininet_topos
    testkit

[importlinter:contract:models-no-shell]
name = The state prediction engine (models) imports no framework, none of the shells, no test tool
type = forbidden
source_modules =
    models
forbidden_modules =
    ryu
    eventlet
    mininet
    ryu_apps
    mininet_topos
    testkit

[importlinter:contract:shells-no-test-tools]
name = The Ryu apps and the Mininet code use no test tool
type = forbidden
source_modules =
    ryu_apps
    mininet_topos
forbidden_modules =
    testkit

[importlinter:contract:decision-path-light]
name = The decision path imports no pandas, pyarrow or models (a packet-in never waits for them)
type = forbidden
source_modules =
    prism.director.core
    prism.policy.base
    prism.flows.identity
    prism.placement
    prism.openflow.changes
    prism.control.plane
    prism.config.load
    prism.mgmt.protocol
    prism.cell
    prism.cluster
forbidden_modules =
    pandas
    pyarrow
    models
ignore_imports =
    # the pure feature function (FirstPacket, FlowHistory, flow_features) moves
    # from models/features.py into prism/policy, without pandas (issue 11, next step).
    prism.policy.base.predictive -> models.features

[importlinter:contract:layers]
name = Shells on top, models in the middle, the core at the bottom
type = layers
layers =
    mininet_topos | ryu_apps
    models
    prism
ignore_imports =
    # see decision-path-light (the feature function moves into the core).
    prism.policy.base.predictive -> models.features
    # the simulator's policies score flows with the model's features and estimator
    # (issue 11, next step: they take the scores as an argument, or move to models).
    prism.sim.policies -> models.estimator
    prism.sim.policies -> models.features
    # `prism simulate --model` loads a model (issue 11, next step: the command moves
    # beside `prism train` / `prism evaluate`, which live in models).
    prism.sim.cli -> models.artifact
    prism.sim.cli -> models.predictor

[importlinter:contract:prism-layers]
name = The core's packages, from the command line down to OpenFlow descriptions
type = layers
containers =
    prism
exhaustive = true
layers =
    cli
    sim | trace | cell
    control
    director
    config
    policy
    telemetry
    (cluster)
    placement
    flows
    openflow
    mgmt | atomic

[importlinter:contract:acyclic]
name = No import cycle between the modules or packages of one package
type = acyclic_siblings
ancestors =
    prism
    models
    ryu_apps
    mininet_topos
    testkit
"""

#: Tracked files never rewritten (generated, or written whole above).
SKIP_FILES = {".importlinter", "constraints.txt"}
MAX_TEXT_BYTES = 4 << 20  #: larger tracked files are data, not references to rewrite
SKIP_SUFFIXES = {".parquet", ".pcap", ".pcapng", ".skops", ".png", ".gz", ".zip", ".npz", ".whl"}
#: Benchmarks run as `python benchmarks/X.py`: the repository root is not on sys.path.
BENCHMARK_BOOTSTRAP = (
    "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  "
    "# testkit (test tools) is not installed: import it from the checkout\n"
)


SECTION = re.compile(r"^\[importlinter:contract:([\w-]+)\]\s*$", re.M)


def _sections(text: str) -> Dict[str, Tuple[int, int]]:
    """contract id -> (start, end) offsets of its section in ``text``."""
    starts = [(m.group(1), m.start()) for m in SECTION.finditer(text)]
    ends = [start for _, start in starts[1:]] + [len(text)]
    return {cid: (start, end) for (cid, start), end in zip(starts, ends)}


def _ignore_block(section: str) -> Optional[Tuple[int, int]]:
    """(start, end) of the ``ignore_imports =`` block (its indented and comment lines) in a section."""
    match = re.search(r"^ignore_imports =[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)*)", section, re.M)
    return (match.start(), match.end()) if match else None


def build_importlinter(old_text: str, dotted: re.Pattern, moves: Dict[str, str], notes: List[str]) -> str:
    """The new contracts, with every ``ignore_imports`` block of the old file carried over.

    The old file's debt entries (those of issue 11, and any a merge added) are kept,
    comments included, under the new module names, in the contract of the same id;
    a contract the new file does not have loses its entries (reported). Optional
    packages that do not exist (prism.cluster before issue 12) are left out.
    """
    text = IMPORTLINTER
    if not Path("prism/cluster").is_dir():
        text = text.replace("    prism.cluster\n", "")
    old_sections, carried = _sections(old_text), 0
    for cid, (start, end) in old_sections.items():
        old_section = old_text[start:end]
        block = _ignore_block(old_section)
        if block is None:
            continue
        entries = old_section[block[0]:block[1]]
        entries = dotted.sub(lambda m: moves[m.group(1)], entries)
        new_sections = _sections(text)
        if cid not in new_sections:
            notes.append(f".importlinter: contract {cid} is gone; its ignore_imports were: "
                         + " ".join(line.strip() for line in entries.splitlines()[1:] if "->" in line))
            continue
        n_start, n_end = new_sections[cid]
        section = text[n_start:n_end]
        existing = _ignore_block(section)
        if existing is None:
            section = section.rstrip("\n") + "\n" + entries.rstrip("\n") + "\n\n"
        else:
            section = section[:existing[0]] + entries.rstrip("\n") + "\n\n" + section[existing[1]:].lstrip("\n")
        text = text[:n_start] + section + text[n_end:]
        carried += sum(1 for line in entries.splitlines() if "->" in line and not line.strip().startswith("#"))
    notes.append(f".importlinter: {carried} ignore_imports entries carried over from the old file (renamed)")
    return text.rstrip("\n") + "\n"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check)


def module_path(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def top_level_modules() -> List[str]:
    """Every module directly in prism/ (prism itself for __init__.py)."""
    found = []
    for path in sorted(Path("prism").glob("*.py")):
        found.append("prism" if path.stem == "__init__" else f"prism.{path.stem}")
    return found


def tracked_text_files() -> List[Path]:
    files = []
    for name in run("git", "ls-files", "-z").stdout.split("\0"):
        if not name or name in SKIP_FILES:
            continue
        path = Path(name)
        if path.suffix in SKIP_SUFFIXES or not path.is_file() or path.stat().st_size > MAX_TEXT_BYTES:
            continue
        try:
            text = path.read_bytes()
        except OSError:
            continue
        if b"\0" in text:
            continue
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


# --- rewriting -------------------------------------------------------------------------


def dotted_pattern(moves: Dict[str, str]) -> re.Pattern:
    """``prism.X`` for every moved X, as a whole name (``prism.flows.identity`` but not
    ``prism.flows_x`` nor ``foo.prism.flows``); an attribute may follow."""
    names = sorted(moves, key=len, reverse=True)
    return re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")(?!\w)")


def path_pattern(moves: Dict[str, str]) -> re.Pattern:
    """``prism/X.py`` for every moved module (in docs, comments, notebooks)."""
    names = sorted((str(module_path(m)) for m in moves), key=len, reverse=True)
    return re.compile(r"(?<![\w/.])(" + "|".join(re.escape(n) for n in names) + r")(?![\w])")


FROM_PRISM_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from prism import (?P<names>[\w ,]+?)(?P<tail>[ \t]*(?:#.*)?)$", re.M)
FROM_PRISM_IMPORT_MULTILINE = re.compile(r"^[ \t]*from prism import \(", re.M)


def rewrite_from_prism_import(text: str, moves: Dict[str, str]) -> Tuple[str, int]:
    """``from prism import a, b`` where a or b moved: one statement per new parent package."""
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        items = [item.strip() for item in match.group("names").split(",") if item.strip()]
        parts = [item.split(" as ") for item in items]
        if not any(f"prism.{name.strip()}" in moves for name, *_ in parts):
            return match.group(0)
        by_parent: Dict[str, List[str]] = {}
        for name, *alias in parts:
            name = name.strip()
            new = moves.get(f"prism.{name}", f"prism.{name}")
            parent, _, leaf = new.rpartition(".")
            entry = leaf if leaf == name and not alias else f"{leaf} as {alias[0].strip() if alias else name}"
            by_parent.setdefault(parent, []).append(entry)
        count += 1
        lines = [f"{match.group('indent')}from {parent} import {', '.join(names)}" for parent, names in by_parent.items()]
        lines[-1] += match.group("tail")
        return "\n".join(lines)

    return FROM_PRISM_IMPORT.sub(replace, text), count


def add_benchmark_bootstrap(path: Path, text: str) -> str:
    """A benchmark script that imports testkit gets the repository root on sys.path."""
    if path.parent != Path("benchmarks") or "testkit" not in text or "sys.path.insert(0" in text:
        return text
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if re.match(r"(from testkit|import testkit)", line)), None)
    if first is None:  # imported inside functions only: after the last top-level import
        first = max(i for i, line in enumerate(lines) if re.match(r"(from|import) \w", line)) + 1
    needs = []
    if not re.search(r"^import sys$", text, re.M):
        needs.append("import sys\n")
    if not re.search(r"^from pathlib import (.*\b)?Path\b", text, re.M):
        needs.append("from pathlib import Path\n")
    lines[first:first] = needs + [BENCHMARK_BOOTSTRAP, "\n"]
    # The imports after the bootstrap are below code now.
    for i in range(first + len(needs) + 2, len(lines)):
        line = lines[i]
        if re.match(r"(from|import) \w", line) and "noqa" not in line:
            lines[i] = line.rstrip("\n") + "  # noqa: E402\n"
        elif line.strip() and not line.startswith(("from ", "import ", " ", ")")):
            break
    return "".join(lines)


FILE_PARENTS = re.compile(r"(Path\(__file__\)(?:\.resolve\(\))?)\.parents\[(\d+)\]")
FILE_PARENT_CHAIN = re.compile(r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent)+)(?!\w)")


def deepen_file_paths(path: Path, text: str, levels: int, notes: List[str]) -> str:
    """A module moved ``levels`` directories deeper: its paths out of prism/ via __file__ follow.

    ``parents[k]`` with k >= 1 and ``.parent.parent...`` (2 or more) left prism/ before
    the move (prism/X.py: parents[1] is the repository): they get ``levels`` more. A path
    into prism/ itself (``parents[0]``, one ``.parent``) or any other use of __file__ is
    reported, not guessed.
    """
    def parents(match: re.Match) -> str:
        k = int(match.group(2))
        if k == 0:
            notes.append(f"{path}: {match.group(0)} (prism/ itself): check by hand")
            return match.group(0)
        return f"{match.group(1)}.parents[{k + levels}]"

    def chain(match: re.Match) -> str:
        count = match.group(2).count(".parent")
        if count < 2:
            notes.append(f"{path}: {match.group(0)} (prism/ itself): check by hand")
            return match.group(0)
        return match.group(1) + ".parent" * (count + levels)

    text = FILE_PARENTS.sub(parents, text)
    text = FILE_PARENT_CHAIN.sub(chain, text)
    handled = len(FILE_PARENTS.findall(text)) + len(FILE_PARENT_CHAIN.findall(text))
    if text.count("__file__") > handled:
        notes.append(f"{path}: uses __file__ in a way not rewritten: check by hand")
    return text


def rewrite_text(path: Path, text: str, moves: Dict[str, str], dotted: re.Pattern,
                 paths: re.Pattern) -> Tuple[str, int]:
    """Every reference to a moved module in one file; returns (new text, references changed)."""
    count = 0
    # Dotted names first: the `from prism import x` rewrite writes new dotted names,
    # which must not be rewritten again.
    text, n = dotted.subn(lambda m: moves[m.group(1)], text)
    count += n
    text, n = rewrite_from_prism_import(text, moves)
    count += n
    path_moves = {str(module_path(old)): str(module_path(new)) for old, new in moves.items()}
    text, n = paths.subn(lambda m: path_moves[m.group(1)], text)
    count += n
    return text, count


# --- main ----------------------------------------------------------------------------


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    parser.add_argument("--verify", action="store_true", help="afterwards run lint-imports and the unit tests")
    parser.add_argument("--leave-unknown", action="store_true",
                        help="leave top-level modules missing from the table where they are")
    parser.add_argument("--allow-dirty", action="store_true", help="run on a tree with uncommitted changes")
    args = parser.parse_args(argv)

    if not (Path("setup.py").is_file() and Path("prism/__init__.py").is_file()):
        print("restructure: run me at the root of a PRISM checkout", file=sys.stderr)
        return 2
    if run("git", "status", "--porcelain", "--untracked-files=no").stdout.strip() and not args.allow_dirty:
        print("restructure: the tree has uncommitted changes (commit them, or --allow-dirty)", file=sys.stderr)
        return 2
    if Path("prism/openflow").is_dir() or Path("testkit").is_dir():
        print("restructure: prism/openflow/ or testkit/ exists already: has it run here before?", file=sys.stderr)
        return 2

    present = top_level_modules()
    table = dict(MOVES)
    for module in present:
        if module in table or module in KEEP:
            continue
        stem = module.split(".", 1)[1]
        for prefix, package in PREFIX_RULES.items():
            if stem.startswith(prefix) and len(stem) > len(prefix):
                table[module] = f"{package}.{stem[len(prefix):]}"
                print(f"by rule: {module_path(module)} -> {module_path(table[module])} (prefix {prefix!r})")
                break
    clashes = sorted({new for new in table.values() if list(table.values()).count(new) > 1})
    if clashes:
        print(f"restructure: two modules would move to the same place: {', '.join(clashes)}", file=sys.stderr)
        return 2
    unknown = [m for m in present if m not in table and m not in KEEP]
    if unknown and not args.leave_unknown:
        print("restructure: top-level modules the table does not name (add a row to MOVES or KEEP):",
              file=sys.stderr)
        for module in unknown:
            print(f"  {module_path(module)}: {first_docstring_line(module_path(module))}", file=sys.stderr)
        return 2
    moves = {old: new for old, new in table.items() if module_path(old).is_file()}
    gone = sorted(set(table) - set(moves))
    if gone:
        print(f"note: {len(gone)} rows name modules that do not exist here and are skipped: "
              + ", ".join(old.split(".", 1)[1] for old in gone))

    packages = sorted({new.rpartition(".")[0] for new in moves.values()})
    print(f"{len(moves)} modules move into {len(packages)} packages: {', '.join(packages)}")
    for old, new in moves.items():
        print(f"  {module_path(old)} -> {module_path(new)}")

    # 1. Moves (git mv keeps each file's history) and the packages' __init__.py.
    if not args.dry_run:
        for package in packages:
            init = Path(*package.split(".")) / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text(f'"""{PACKAGES.get(package, package)}"""\n', encoding="utf-8")
                run("git", "add", str(init))
        for old, new in moves.items():
            run("git", "mv", str(module_path(old)), str(module_path(new)))

    # 2. References everywhere.
    dotted, paths = dotted_pattern(moves), path_pattern(moves)
    changed: Dict[str, int] = {}
    multiline: List[str] = []
    file_notes: List[str] = []
    moved_to = {str(module_path(new)): len(module_path(new).parts) - len(module_path(old).parts)
                for old, new in moves.items()}
    moved_from = {str(module_path(old)): levels
                  for (old, new), levels in zip(moves.items(), moved_to.values())}
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8")
        levels = moved_to.get(str(path)) if not args.dry_run else moved_from.get(str(path))
        if levels and "__file__" in text:
            deepened = deepen_file_paths(path, text, levels, file_notes)
            if deepened != text:
                changed[str(path)] = changed.get(str(path), 0) + 1
                if not args.dry_run:
                    path.write_text(deepened, encoding="utf-8")
                text = deepened if not args.dry_run else text
        if FROM_PRISM_IMPORT_MULTILINE.search(text):
            multiline.append(str(path))
        new_text, count = rewrite_text(path, text, moves, dotted, paths)
        new_text = add_benchmark_bootstrap(path, new_text)
        if new_text != text:
            changed[str(path)] = changed.get(str(path), 0) + count
            if not args.dry_run:
                path.write_text(new_text, encoding="utf-8")
    if args.dry_run:
        # Files moved in a real run are read at their old paths here.
        print(f"{len(changed)} files would change ({sum(changed.values())} references)")
    else:
        previous = Path(".importlinter").read_text(encoding="utf-8") if Path(".importlinter").is_file() else ""
        Path(".importlinter").write_text(build_importlinter(previous, dotted, moves, file_notes), encoding="utf-8")
        add_code_map(moves)
        print(f"{len(changed)} files rewritten ({sum(changed.values())} references); .importlinter rewritten")
    for name in sorted(changed):
        print(f"  {name}: {changed[name]}")

    # 3. What is left over: any reference to an old name that the patterns did not catch.
    problems = report_leftovers(moves, args.dry_run)
    for name in multiline:
        problems.append(f"{name}: a parenthesized `from prism import (...)`: check it by hand")
    problems.extend(file_notes)
    if unknown:
        problems.append("left in prism/ (not in the table): " + ", ".join(str(module_path(m)) for m in unknown))
    remaining = [m for m in top_level_modules() if m != "prism"] if not args.dry_run else []
    if len(remaining) + 1 > 6:
        problems.append(f"{len(remaining) + 1} modules directly in prism/ (target: at most 6)")
    for problem in problems:
        print(f"CHECK: {problem}")

    if args.verify and not args.dry_run:
        return verify()
    return 0


CODE_MAP = Path("docs/architecture.md")
CODE_MAP_TITLE = "## Where the code lives"


def add_code_map(moves: Dict[str, str]) -> None:
    """A section of docs/architecture.md: each package of prism/ and what it holds."""
    if not CODE_MAP.is_file() or CODE_MAP_TITLE in CODE_MAP.read_text(encoding="utf-8"):
        return
    packages: Dict[str, List[str]] = {}
    for new in sorted(moves.values()):
        package, _, leaf = new.rpartition(".")
        packages.setdefault(package, []).append(leaf)
    lines = ["", CODE_MAP_TITLE, "",
             "Packages from the command line down (each may import only the ones below it;",
             "`.importlinter` checks it, `make test` runs the check):", "",
             "| package | what it holds | modules |", "|---|---|---|"]
    order = ["prism.sim", "prism.trace.cli", "prism.cell", "prism.control.plane", "prism.director.core", "prism.config.load",
             "prism.policy.base", "prism.telemetry.rows", "prism.cluster", "prism.placement", "prism.flows.identity",
             "prism.openflow.changes", "prism.mgmt.protocol"]
    for package in order + sorted(p for p in set(packages) - set(order) if p.startswith("prism.")):
        if package == "prism.cell":
            modules = sorted(p.stem for p in Path("prism/cell").glob("*.py") if p.stem != "__init__")
            what = first_docstring_line(Path("prism/cell/__init__.py"))
        elif package in packages:
            modules, what = packages[package], PACKAGES.get(package, "")
        else:
            continue
        lines.append(f"| `{package.replace('.', '/')}/` | {what} | {', '.join(modules)} |")
    kept = sorted(m for m in KEEP if m != "prism" and module_path(m).is_file())
    lines += ["", "Directly in `prism/`: " + ", ".join(f"`{module_path(m).name}`" for m in kept)
              + " (the `prism` command and crash-safe writes). `testkit/` holds the test",
              "tools (a fake OpenFlow switch, frame builders); it is not installed with PRISM.", ""]
    text = CODE_MAP.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines)
    CODE_MAP.write_text(text, encoding="utf-8")


def first_docstring_line(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").lstrip().splitlines()[0].strip('"').strip()
    except (OSError, IndexError):
        return ""


def report_leftovers(moves: Dict[str, str], dry_run: bool) -> List[str]:
    if dry_run:
        return []
    leftovers = []
    old_bare = sorted({old.split(".", 1)[1] for old in moves})
    # `prism_X` in a path or a dotted name only; a package that kept the old name
    # (prism.flows.identity, prism.trace.cli ...) is a valid prefix now and is not reported.
    packages = {new.rsplit(".", 1)[0] for new in moves.values()}
    stale = re.compile(
        r"(?<![\w.])prism[./](" + "|".join(re.escape(n) for n in old_bare) + r")(?:\.py)?(?![\w/])"
    )
    moved_bare = {old.split(".", 1)[1] for old in moves}
    from_prism = re.compile(r"from prism import ([\w ,]+)")
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8")
        for match in from_prism.finditer(text):
            names = {item.split(" as ")[0].strip() for item in match.group(1).split(",")}
            if names & moved_bare:
                line = text.count("\n", 0, match.start()) + 1
                leftovers.append(f"{path}:{line}: still says {match.group(0).strip()}")
        for match in stale.finditer(text):
            name = f"prism.{match.group(1)}"
            if name in packages and not match.group(0).endswith(".py"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            leftovers.append(f"{path}:{line}: still names {match.group(0)}")
    return leftovers


def verify() -> int:
    python = Path(".venv/bin/python")
    lint = Path(".venv/bin/lint-imports")
    status = 0
    if lint.exists():
        result = run(str(lint), "--no-cache", check=False)
        print(result.stdout[-4000:], result.stderr[-2000:])
        status |= result.returncode
    if python.exists():
        result = subprocess.run([str(python), "-m", "pytest", "tests/unit", "-q", "-x", "-p", "no:cacheprovider"])
        status |= result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
