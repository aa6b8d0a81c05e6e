"""Checks a composed YAML document against PRISM's configuration schema, keeping every problem's position."""

from __future__ import annotations

import difflib
import re
from typing import Dict, List, Optional, Tuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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
    PrismConfig,
    SwitchConfig,
)
from prism.config.bfd import check_bfd
from prism.config.mgmt import (
    check_address,
    check_cell_addresses,
    check_limits,
    check_management,
    check_openflow,
    check_rest,
)
from prism.config.etcd import check_etcd
from prism.config.telemetry import check_prediction, check_telemetry
from prism.placement.profiles import MODE_FULL, MODES

TOP_KEYS = (
    "idle_timeout", "default_replication_factor", "max_replication_factor", "mirroring_mode", "management",
    "rest", "telemetry", "prediction", "bfd", "etcd", "switches", "openflow", "limits",
)  # fmt: skip
SWITCH_KEYS = ("dpid", "name", "cells", "edge_ports")
CELL_KEYS = ("id", "port", "mgmt")
CELL_REQUIRED_KEYS = ("id", "port")

_TAG_INT = "tag:yaml.org,2002:int"
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_NAMES = {
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:bool": "a boolean",
    _TAG_INT: "an integer",
    "tag:yaml.org,2002:float": "a float",
    _TAG_STR: "a string",
}
_DPID_COLONS = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){7}")
_DPID_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_DPID_RYU = re.compile(r"[0-9a-fA-F]{16}")  #: Ryu's dpid_lib text form
_DPID_DECIMAL = re.compile(r"[0-9]+")
_CONSTRUCTOR = yaml.SafeLoader("")  # constructs scalar values from composed nodes


def check_document(root: Optional[Node], source: str) -> Tuple[Optional[PrismConfig], List[ConfigProblem]]:
    """Check a composed document.

    Args:
        root: ``yaml.compose``'s result (None for an empty document).
        source: File name for the problems' locations.

    Returns:
        ``(config, problems)``: problems sorted by position; ``config`` is
        meaningful only if none of them is an error.
    """
    checker = _Checker(source)
    config = checker.check(root)
    return config, sorted(checker.problems, key=lambda p: (p.line, p.column))


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


def _where(node: Node) -> Tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, node.tag)


class _Checker:
    """Walks the composed YAML nodes, collecting problems with their positions."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: List[ConfigProblem] = []
        self.mgmt_cells: List[Tuple[CellConfig, Node, str]] = []  # cells with a 'mgmt' address

    def report(self, node: Node, path: str, message: str, severity: str = SEVERITY_ERROR) -> None:
        line, column = _where(node)
        self.problems.append(ConfigProblem(self.source, line, column, path, message, severity))

    # --- generic node checks --------------------------------------------------------
    def mapping(
        self, node: Node, path: str, allowed: Tuple[str, ...], required: Tuple[str, ...]
    ) -> Optional[Dict[str, Node]]:
        """Key -> value node; reports wrong type, unknown, duplicate and missing keys."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping, got {_kind(node)}")
            return None
        values: Dict[str, Node] = {}
        key_lines: Dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            key_path = f"{path}.{key}" if path else str(key)
            if key is None or key not in allowed:
                shown = key if key is not None else f"<{_kind(key_node)}>"
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(allowed)}"
                self.report(key_node, key_path, f"unknown key '{shown}' ({hint})")
            elif key in values:
                self.report(key_node, key_path, f"duplicate key '{key}' (also at line {key_lines[key]})")
            else:
                values[key] = value_node
                key_lines[key] = _where(key_node)[0]
        for key in required:
            if key not in values:
                self.report(node, path, f"missing required key '{key}'")
        return values

    def sequence(self, node: Node, path: str, what: str, plural: str) -> Optional[List[Node]]:
        """The item nodes of a non-empty list, or None (reported)."""
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list of {plural}, got {_kind(node)}")
            return None
        if not node.value:
            self.report(node, path, f"at least one {what} is required")
            return None
        return node.value

    def integer(self, node: Node, path: str, minimum: int, maximum: Optional[int] = None) -> Optional[int]:
        """An int scalar within bounds, or None (reported)."""
        if not (isinstance(node, ScalarNode) and node.tag == _TAG_INT):
            self.report(node, path, f"expected an integer, got {_kind(node)}")
            return None
        value = _CONSTRUCTOR.construct_yaml_int(node)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self.report(node, path, f"must be an integer {bound}, got {value}")
            return None
        return value

    def string(self, node: Node, path: str, what: str) -> Optional[str]:
        """A non-empty string scalar, or None (reported)."""
        if not (isinstance(node, ScalarNode) and node.tag == _TAG_STR):
            hint = f" (quote it: '{node.value}')" if isinstance(node, ScalarNode) and node.value else ""
            self.report(node, path, f"{what} must be a string, got {_kind(node)}{hint}")
            return None
        if not node.value.strip():
            self.report(node, path, f"{what} must not be empty")
            return None
        return node.value

    # --- the schema ------------------------------------------------------------------
    def check(self, root: Optional[Node]) -> Optional[PrismConfig]:
        """Check the whole document; returns a config if the structure allowed building one."""
        if root is None:
            self.problems.append(ConfigProblem(
                self.source, 1, 1, "", "empty configuration: expected at least a 'switches' list",
            ))  # fmt: skip
            return None
        top = self.mapping(root, "", TOP_KEYS, ("switches",))
        if top is None:
            return None
        idle_timeout = DEFAULT_IDLE_TIMEOUT_S
        if "idle_timeout" in top:
            idle_timeout = self.integer(top["idle_timeout"], "idle_timeout", 1) or idle_timeout
        default_rf = self._factor(top, "default_replication_factor", DEFAULT_REPLICATION_FACTOR)
        max_rf = self._factor(top, "max_replication_factor", DEFAULT_MAX_REPLICATION_FACTOR)
        if default_rf is not None and max_rf is not None and default_rf > max_rf:
            node = top.get("default_replication_factor") or top["max_replication_factor"]
            self.report(node, "default_replication_factor",
                        f"{default_rf} is more than max_replication_factor {max_rf}")  # fmt: skip
        switches: Dict[int, SwitchConfig] = {}
        switch_nodes = None
        if "switches" in top:
            switch_nodes = self.sequence(top["switches"], "switches", "switch", "switches")
        seen_dpids: Dict[int, Tuple[int, int]] = {}
        seen_names: Dict[str, Tuple[int, int]] = {}
        for index, switch_node in enumerate(switch_nodes or ()):
            switch = self._switch(switch_node, f"switches[{index}]", index, seen_dpids, seen_names)
            if switch is None:
                continue
            switches[switch.dp_id] = switch
            self._check_factors(top, switch, switch_node, index, default_rf, max_rf)
        management = check_management(self, top.get("management"))
        check_cell_addresses(self, self.mgmt_cells, management, top.get("management") or root)
        return PrismConfig(
            switches, idle_timeout,
            DEFAULT_REPLICATION_FACTOR if default_rf is None else default_rf,
            DEFAULT_MAX_REPLICATION_FACTOR if max_rf is None else max_rf,
            management=management, rest=check_rest(self, top.get("rest")),
            openflow=check_openflow(self, top.get("openflow")),
            limits=check_limits(self, top.get("limits")),
            telemetry=check_telemetry(self, top.get("telemetry")),
            prediction=check_prediction(self, top.get("prediction"), max_rf),
            mirroring_mode=self._mirroring_mode(top.get("mirroring_mode")),
            bfd=check_bfd(self, top.get("bfd")),
            etcd=check_etcd(self, top.get("etcd")),
            source=self.source,
        )  # fmt: skip

    def _mirroring_mode(self, node: Optional[Node]) -> str:
        """``mirroring_mode``: one of prism.placement.profiles.MODES (default ``full``)."""
        if node is None:
            return MODE_FULL
        text = self.string(node, "mirroring_mode", "mirroring_mode")
        if text is not None and text not in MODES:
            self.report(node, "mirroring_mode", f"must be one of {', '.join(MODES)}, got {text!r}")
            return MODE_FULL
        return text or MODE_FULL

    def _factor(self, top: Dict[str, Node], key: str, default: int) -> Optional[int]:
        if key not in top:
            return default
        return self.integer(top[key], key, 0)

    def _check_factors(
        self, top: Dict[str, Node], switch: SwitchConfig, switch_node: MappingNode, index: int,
        default_rf: Optional[int], max_rf: Optional[int],
    ) -> None:  # fmt: skip
        usable = len(switch.cells) - 1
        cells_node = next(v for k, v in switch_node.value if k.value == "cells")
        cells_text = f"switches[{index}] ('{switch.name}') has {len(switch.cells)} cell" + (
            "s" if len(switch.cells) != 1 else ""
        )
        if default_rf is not None and default_rf > usable:
            node, path, subject = self._factor_location(top, "default_replication_factor", cells_node, index)
            self.report(node, path, f"{subject}{default_rf} needs {default_rf + 1} cells per switch; "
                        f"{cells_text} (add cells or lower it)")  # fmt: skip
        if max_rf is not None and max_rf > usable and (default_rf is None or default_rf <= usable):
            node, path, subject = self._factor_location(top, "max_replication_factor", cells_node, index)
            self.report(node, path, f"{subject}{max_rf} needs {max_rf + 1} cells to be reached; "
                        f"{cells_text}", SEVERITY_WARNING)  # fmt: skip

    @staticmethod
    def _factor_location(
        top: Dict[str, Node], key: str, cells_node: Node, index: int
    ) -> Tuple[Node, str, str]:
        """Where to report a factor: at the key if written, else at the switch's cells (default)."""
        if key in top:
            return top[key], key, ""
        return cells_node, f"switches[{index}].cells", f"{key} (default) "

    def _switch(
        self, node: Node, path: str, index: int, seen_dpids: Dict[int, Tuple[int, int]],
        seen_names: Dict[str, Tuple[int, int]],
    ) -> Optional[SwitchConfig]:  # fmt: skip
        fields = self.mapping(node, path, SWITCH_KEYS, ("dpid", "cells", "edge_ports"))
        if fields is None:
            return None
        dp_id = self._dpid(fields["dpid"], f"{path}.dpid") if "dpid" in fields else None
        if dp_id is not None:
            if dp_id in seen_dpids:
                other, line = seen_dpids[dp_id]
                self.report(fields["dpid"], f"{path}.dpid",
                            f"duplicate dpid {dp_id:#x} (also switches[{other}] at line {line})")
                dp_id = None
            else:
                seen_dpids[dp_id] = (index, _where(fields["dpid"])[0])
        name = None
        if "name" in fields:
            name = self.string(fields["name"], f"{path}.name", "switch name")
            if name is not None and name in seen_names:
                other, line = seen_names[name]
                self.report(fields["name"], f"{path}.name",
                            f"duplicate switch name '{name}' (also switches[{other}] at line {line})")
            elif name is not None:
                seen_names[name] = (index, _where(fields["name"])[0])
        cells, cells_complete = [], False
        if "cells" in fields:
            cells, cells_complete = self._cells(fields["cells"], f"{path}.cells")
        edge_ports = None
        if "edge_ports" in fields:
            edge_ports = self._edge_ports(fields["edge_ports"], f"{path}.edge_ports", cells)
        if dp_id is None or not cells_complete or edge_ports is None:
            return None
        return SwitchConfig(dp_id, name or f"s{dp_id}", tuple(c for c, _ in cells), edge_ports)

    def _dpid(self, node: Node, path: str) -> Optional[int]:
        if isinstance(node, ScalarNode) and node.tag in (_TAG_INT, _TAG_STR):
            # The raw text, not YAML's reading of it: YAML 1.1 takes 0000000000000010
            # for octal and 10:00:00:00:00:00:00:01 for a base-60 number.
            value = parse_dpid(node.value)
            if value is not None:
                return value
        shown = repr(node.value) if isinstance(node, ScalarNode) else _kind(node)
        self.report(node, path, f"not a datapath id: {shown} "
                    "(use e.g. 1, 0x1, 0000000000000001 or 00:00:00:00:00:00:00:01)")  # fmt: skip
        return None

    def _cells(self, node: Node, path: str) -> Tuple[List[Tuple[CellConfig, Node]], bool]:
        """The valid cells with their port nodes, and whether every cell was valid."""
        items = self.sequence(node, path, "cell", "cells")
        if items is None:
            return [], False
        cells: List[Tuple[CellConfig, Node]] = []
        ids: Dict[str, Tuple[int, int]] = {}
        ports: Dict[int, Tuple[str, int]] = {}
        complete = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            fields = self.mapping(item, item_path, CELL_KEYS, CELL_REQUIRED_KEYS)
            if fields is None:
                complete = False
                continue
            cell_id = port = None
            if "id" in fields:
                cell_id = self.string(fields["id"], f"{item_path}.id", "cell id")
            if "port" in fields:
                port = self.integer(fields["port"], f"{item_path}.port", 1, MAX_PORT_NUMBER)
            if cell_id is not None and cell_id in ids:
                other, line = ids[cell_id]
                self.report(fields["id"], f"{item_path}.id",
                            f"duplicate cell id '{cell_id}' (also {path}[{other}] at line {line})")
                cell_id = None
            elif cell_id is not None:
                ids[cell_id] = (index, _where(fields["id"])[0])
            if port is not None and port in ports:
                other_id, line = ports[port]
                self.report(fields["port"], f"{item_path}.port",
                            f"duplicate port {port} (also cell '{other_id}' at line {line})")
                port = None
            elif port is not None:
                ports[port] = (cell_id or "?", _where(fields["port"])[0])
            mgmt = None
            if "mgmt" in fields:
                mgmt = check_address(self, fields["mgmt"], f"{item_path}.mgmt", "cell management address")
                if mgmt is None:
                    complete = False
            if cell_id is None or port is None:
                complete = False
                continue
            cell = CellConfig(cell_id, port, mgmt)
            cells.append((cell, fields["port"]))
            if mgmt is not None:
                self.mgmt_cells.append((cell, fields["mgmt"], f"{item_path}.mgmt"))
        return cells, complete

    def _edge_ports(
        self, node: Node, path: str, cells: List[Tuple[CellConfig, Node]]
    ) -> Optional[Tuple[int, ...]]:
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list of ports, got {_kind(node)}")
            return None
        if not node.value:
            self.report(node, path, "no edge ports: no traffic will reach the cells", SEVERITY_WARNING)
        cell_ports = {cell.port: (cell.id, _where(port_node)[0]) for cell, port_node in cells}
        ports: List[int] = []
        seen: Dict[int, Tuple[int, int]] = {}
        complete = True
        for index, item in enumerate(node.value):
            port = self.integer(item, f"{path}[{index}]", 1, MAX_PORT_NUMBER)
            if port is None:
                complete = False
            elif port in seen:
                other, line = seen[port]
                self.report(item, f"{path}[{index}]",
                            f"duplicate edge port {port} (also {path}[{other}] at line {line})")
                complete = False
            elif port in cell_ports:
                cell_id, line = cell_ports[port]
                self.report(item, f"{path}[{index}]",
                            f"port {port} is both an edge port and cell '{cell_id}'s port (line {line})")
                complete = False
            else:
                seen[port] = (index, _where(item)[0])
                ports.append(port)
        return tuple(ports) if complete else None
