"""The configuration document's schema (its switches; the sections' settings are their own), the checks
across keys, and the PrismConfig they give."""

import dataclasses
import re
from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Optional, Tuple

from pydantic import PlainValidator, TypeAdapter, ValidationError
from yaml.nodes import Node

from prism.config.bfd import BfdConfig, check_bfd
from prism.config.document import Document, Loc, path_of
from prism.config.etcd import EtcdConfig
from prism.config.fields import FORBID, choice, fail, integer, listed, text
from prism.config.mgmt import check_cell_addresses, check_management, check_rest
from prism.config.telemetry import PredictionConfig, TelemetryConfig, check_prediction, resolve_path
from prism.config.types import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_REPLICATION_FACTOR,
    DEFAULT_REPLICATION_FACTOR,
    MAX_DPID,
    MAX_PORT_NUMBER,
    SEVERITY_ERROR,
    SEVERITY_WARNING,
    CellConfig,
    ConfigProblem,
    LimitsConfig,
    ManagementConfig,
    OpenFlowConfig,
    PrismConfig,
    RestConfig,
    SwitchConfig,
)
from prism.placement.profiles import MODE_FULL, MODES

_DPID_COLONS = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){7}")
_DPID_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_DPID_RYU = re.compile(r"[0-9a-fA-F]{16}")  #: Ryu's dpid_lib text form
_DPID_DECIMAL = re.compile(r"[0-9]+")


def parse_dpid(text: str) -> Optional[int]:
    """A datapath id from text: ``1``, ``0x1``, ``0000000000000001`` or ``00:..:01``; None if not one."""
    text = text.strip()
    if _DPID_COLONS.fullmatch(text):
        value = int(text.replace(":", ""), 16)
    elif _DPID_HEX.fullmatch(text) or _DPID_RYU.fullmatch(text):
        value = int(text, 16)
    elif _DPID_DECIMAL.fullmatch(text):
        value = int(text)
    else:
        return None
    return value if value <= MAX_DPID else None


def _dpid(value: Any) -> int:
    """A datapath id, from the text as written (``prism.config.document.AS_WRITTEN``)."""
    dp_id = parse_dpid(value) if isinstance(value, str) else None
    if dp_id is None:
        fail("not a datapath id: {shown} (use e.g. 1, 0x1, 0000000000000001 or 00:00:00:00:00:00:00:01)")
    return dp_id


@dataclass(frozen=True, kw_only=True)
class _Switch:
    __pydantic_config__ = FORBID

    dpid: Annotated[int, PlainValidator(_dpid)]
    name: Annotated[Optional[str], text("switch name")] = None
    cells: Annotated[Tuple[CellConfig, ...], listed("cells", "cell")]
    edge_ports: Annotated[Tuple[Annotated[int, integer(1, MAX_PORT_NUMBER)], ...], listed("ports")]


@dataclass(frozen=True, kw_only=True)
class _Document:
    """The whole file; a section that is absent is None (written, it must be a mapping)."""

    __pydantic_config__ = FORBID

    idle_timeout: Annotated[int, integer(1)] = DEFAULT_IDLE_TIMEOUT_S
    default_replication_factor: Annotated[int, integer(0)] = DEFAULT_REPLICATION_FACTOR
    max_replication_factor: Annotated[int, integer(0)] = DEFAULT_MAX_REPLICATION_FACTOR
    mirroring_mode: Annotated[str, choice(*MODES)] = MODE_FULL
    management: ManagementConfig = None
    rest: RestConfig = None
    telemetry: TelemetryConfig = None
    prediction: PredictionConfig = None
    bfd: BfdConfig = None
    etcd: EtcdConfig = None
    switches: Annotated[Tuple[_Switch, ...], listed("switches", "switch")]
    openflow: OpenFlowConfig = None
    limits: LimitsConfig = None


_READ = TypeAdapter(_Document)


def check_document(root: Optional[Node], source: str) -> Tuple[Optional[PrismConfig], List[ConfigProblem]]:
    """Check a composed document.

    Args:
        root: ``yaml.compose``'s result (None for an empty document).
        source: File name for the problems' locations.

    Returns:
        ``(config, problems)``: problems sorted by position; ``config`` is None if any is an error.
    """
    if root is None:
        return None, [ConfigProblem(source, 1, 1, "", "empty configuration: expected at least a 'switches' list")]
    doc = Document(root, source)
    try:
        document: Optional[_Document] = _READ.validate_python(doc.data)
    except ValidationError as error:
        doc.report_validation(error, _Document)
        document = None
    for check in (_check_switches, _check_factors, check_management, check_rest, check_cell_addresses,
                  check_prediction, check_bfd):  # fmt: skip
        check(doc)
    problems = sorted(doc.problems, key=lambda p: (p.line, p.column))
    if document is None or any(p.severity == SEVERITY_ERROR for p in problems):
        return None, problems
    return _config(document, source), problems


def _check_switches(doc: Document) -> None:
    """Unique datapath ids and names; on each switch, unique cell ids, cell ports and edge ports."""
    dpids: Dict[int, Tuple[str, int]] = {}
    names: Dict[str, Tuple[str, int]] = {}
    for index, _ in doc.items(("switches",)):
        at = ("switches", index)
        dpid = doc.value(at + ("dpid",))
        if dpid is not None:
            dp_id = parse_dpid(dpid)
            doc.unique(dpids, dp_id, at + ("dpid",), f"duplicate dpid {dp_id:#x}", f"switches[{index}]")
        name = doc.value(at + ("name",))
        if name is not None:
            doc.unique(names, name, at + ("name",), f"duplicate switch name '{name}'", f"switches[{index}]")
        ids: Dict[str, Tuple[str, int]] = {}
        ports: Dict[int, Tuple[str, int]] = {}
        for cell, _ in doc.items(at + ("cells",)):
            cell_at = at + ("cells", cell)
            cell_id = doc.value(cell_at + ("id",))
            if cell_id is not None:
                doc.unique(ids, cell_id, cell_at + ("id",), f"duplicate cell id '{cell_id}'", path_of(cell_at))
            port = doc.value(cell_at + ("port",))
            if port is not None:
                label = f"cell '{doc.value(cell_at + ('id',)) or '?'}'"
                doc.unique(ports, port, cell_at + ("port",), f"duplicate port {port}", label)
        _check_edge_ports(doc, at, ports)


def _check_edge_ports(doc: Document, at: Loc, cell_ports: Dict[int, Tuple[str, int]]) -> None:
    """Edge ports: unique, none a cell's port; none at all is a warning."""
    if doc.value(at + ("edge_ports",)) == ():
        doc.report(at + ("edge_ports",), "no edge ports: no traffic will reach the cells", SEVERITY_WARNING)
    seen: Dict[int, Tuple[str, int]] = {}
    for index, port in doc.items(at + ("edge_ports",)):
        loc = at + ("edge_ports", index)
        if doc.value(loc) is None:
            continue
        if port in cell_ports:
            cell, line = cell_ports[port]  # cell: "cell 'c1'"
            doc.report(loc, f"port {port} is both an edge port and {cell[:-1]}'s port (line {line})")
        else:
            doc.unique(seen, port, loc, f"duplicate edge port {port}", path_of(loc))


def _check_factors(doc: Document) -> None:
    """The default factor within the maximum; every switch has the cells for the default (else an error)
    and for the maximum (else a warning: the policy caps it)."""
    default = doc.value(("default_replication_factor",), DEFAULT_REPLICATION_FACTOR)
    maximum = doc.value(("max_replication_factor",), DEFAULT_MAX_REPLICATION_FACTOR)
    if default is not None and maximum is not None and default > maximum:
        loc, subject = _factor_at(doc, "default_replication_factor", ("max_replication_factor",))
        doc.report(loc, f"{subject}{default} is more than max_replication_factor {maximum}")
    for index, switch in doc.items(("switches",)):
        at = ("switches", index)
        if not doc.clean(at):
            continue
        cells = len(switch["cells"])
        name = switch.get("name") or f"s{parse_dpid(switch['dpid'])}"
        has = f"switches[{index}] ('{name}') has {cells} cell" + ("s" if cells != 1 else "")
        if default is not None and default > cells - 1:
            loc, subject = _factor_at(doc, "default_replication_factor", at + ("cells",))
            doc.report(loc, f"{subject}{default} needs {default + 1} cells per switch; {has} (add cells or lower it)")
        elif maximum is not None and maximum > cells - 1:
            loc, subject = _factor_at(doc, "max_replication_factor", at + ("cells",))
            doc.report(loc, f"{subject}{maximum} needs {maximum + 1} cells to be reached; {has}", SEVERITY_WARNING)


def _factor_at(doc: Document, key: str, fallback: Loc) -> Tuple[Loc, str]:
    """Where to report a factor: at its key if written, else at ``fallback``, naming the default."""
    return ((key,), "") if doc.has((key,)) else (fallback, f"{key} (default) ")


def _config(document: _Document, source: str) -> PrismConfig:
    """The settings of a document without errors, its files resolved against its directory."""
    switches = {
        switch.dpid: SwitchConfig(switch.dpid, switch.name or f"s{switch.dpid}", switch.cells, switch.edge_ports)
        for switch in document.switches
    }
    management = document.management or ManagementConfig()
    files = {key: resolve_path(getattr(management, key), source)
             for key in ("key_file", "generation_file") if getattr(management, key)}  # fmt: skip
    telemetry, prediction = document.telemetry, document.prediction
    if telemetry is not None:
        telemetry = dataclasses.replace(telemetry, dir=resolve_path(telemetry.dir, source))
    if prediction is not None and prediction.model is not None:
        prediction = dataclasses.replace(prediction, model=resolve_path(prediction.model, source))
    return PrismConfig(
        switches, document.idle_timeout, document.default_replication_factor, document.max_replication_factor,
        management=dataclasses.replace(management, **files), rest=document.rest or RestConfig(),
        openflow=document.openflow or OpenFlowConfig(), limits=document.limits or LimitsConfig(),
        telemetry=telemetry, prediction=prediction, mirroring_mode=document.mirroring_mode, bfd=document.bfd,
        etcd=document.etcd, source=source,
    )  # fmt: skip
