"""The YAML document as the schema sees it: plain values, the node each came from, and the problems found.

pydantic checks the plain values; each of its errors is reported at the node
its location names (``switches[0].cells[1].port`` -> line 7, column 15). The
checks across keys (duplicates, a factor too large for a switch's cells) read
the values here, and only those that passed their own checks, so that every
problem of a file is reported at once.
"""

import dataclasses
import difflib
from typing import Any, Dict, List, Optional, Tuple, Union, get_args, get_type_hints

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prism.config.types import SEVERITY_ERROR, ConfigProblem

Loc = Tuple[Union[str, int], ...]
#: Keys whose scalar is taken as written: YAML 1.1 reads 0000000000000010 as an octal
#: number, 10:00:00:00:00:00:00:01 as a base-60 one and ``off`` as false.
AS_WRITTEN = ("dpid", "birth")
_TAG_NAMES = {
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a float",
    "tag:yaml.org,2002:str": "a string",
}
#: Values a document may hold once its aliases are expanded: a file of a thousand switches holds
#: far fewer, and nine nested aliases of nine items each ("billion laughs") far more.
MAX_VALUES = 100_000
_ABSENT = object()
_UNREADABLE = object()  #: a scalar of a tag that safe YAML does not construct (the checks name its tag)


def kind(node: Node) -> str:
    """``a mapping``, ``a list``, ``an integer`` ... (a tag of its own is named as written)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, node.tag)


def path_of(loc: Loc) -> str:
    """``("switches", 0, "cells")`` -> ``switches[0].cells``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


class Document:
    """A composed YAML document: its values, their nodes, and the problems found in them.

    Attributes:
        data: The document as dicts, tuples and scalars.
        problems: Every problem reported so far, in the order found.
    """

    def __init__(self, root: Node, source: str) -> None:
        self.source = source
        self.problems: List[ConfigProblem] = []
        self._nodes: Dict[Loc, Node] = {}
        self._keys: Dict[Loc, Node] = {}
        self._bad: List[Loc] = []  # where an error is, to keep the checks across keys off it
        self._constructor = yaml.SafeLoader("")
        self._values = 0
        self.data = self._read(root, (), frozenset())

    def _read(self, node: Node, loc: Loc, enclosing: frozenset) -> Any:
        self._values += 1
        if self._values > MAX_VALUES:
            if self._values == MAX_VALUES + 1:
                self.report((), f"the document holds more than {MAX_VALUES:,} values once its aliases are "
                                "expanded: refused (an alias bomb?)")  # fmt: skip
            return None
        self._nodes[loc] = node
        if isinstance(node, ScalarNode):
            if loc and loc[-1] in AS_WRITTEN:
                return node.value
            try:
                return self._constructor.construct_object(node)
            except yaml.YAMLError:
                return _UNREADABLE
        if id(node) in enclosing:
            self.report(loc, "a YAML alias may not refer to a mapping or list that encloses it")
            return None
        enclosing = enclosing | {id(node)}
        if isinstance(node, SequenceNode):
            return tuple(self._read(item, loc + (index,), enclosing) for index, item in enumerate(node.value))
        values: Dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else f"<{kind(key_node)}>"
            if key in values:
                line = self._keys[loc + (key,)].start_mark.line + 1
                self._add(key_node, loc + (key,), f"duplicate key '{key}' (also at line {line})")
                continue
            self._keys[loc + (key,)] = key_node
            values[key] = self._read(value_node, loc + (key,), enclosing)
        return values

    # --- problems ----------------------------------------------------------------------
    def _add(self, node: Node, loc: Loc, message: str, severity: str = SEVERITY_ERROR) -> None:
        mark = node.start_mark
        self.problems.append(ConfigProblem(self.source, mark.line + 1, mark.column + 1, path_of(loc), message,
                                           severity))  # fmt: skip

    def _node(self, loc: Loc) -> Node:
        """The node written at ``loc``, or at its nearest written parent."""
        while loc not in self._nodes:
            loc = loc[:-1]
        return self._nodes[loc]

    def report(self, loc: Loc, message: str, severity: str = SEVERITY_ERROR) -> None:
        """A problem at ``loc`` (at its nearest written parent if ``loc`` is absent)."""
        if severity == SEVERITY_ERROR:
            self._bad.append(loc)
        self._add(self._node(loc), loc, message, severity)

    def report_validation(self, error: ValidationError, schema: type) -> None:
        """pydantic's errors from validating ``data`` as ``schema`` (a dataclass), each at its node,
        in the configuration's words."""
        for item in error.errors(include_url=False):
            loc, error_type = tuple(item["loc"]), item["type"]
            if error_type == "unexpected_keyword_argument":  # an unknown key leaves the rest of its mapping usable
                self._add(self._keys[loc], loc, _unknown_key(str(loc[-1]), _keys_at(schema, loc[:-1])))
                continue
            self._bad.append(loc)
            if error_type == "missing":
                self._add(self._node(loc[:-1]), loc[:-1], f"missing required key '{loc[-1]}'")
                continue
            node = self._node(loc)
            shown = repr(node.value) if isinstance(node, ScalarNode) else kind(node)
            message = "expected a mapping, got {kind}" if error_type == "dataclass_type" else item["msg"]
            message = message.replace("{kind}", kind(node)).replace("{shown}", shown)
            self._add(node, loc, message.replace("{text}", node.value if isinstance(node, ScalarNode) else shown))

    # --- values, for the checks across keys ------------------------------------------------
    def _at(self, loc: Loc) -> Any:
        value = self.data
        for part in loc:
            inside = isinstance(value, dict) if isinstance(part, str) else isinstance(value, tuple)
            if not inside or not (part in value if isinstance(part, str) else part < len(value)):
                return _ABSENT
            value = value[part]
        return value

    def has(self, loc: Loc) -> bool:
        """Whether ``loc`` is written (right or wrong)."""
        return self._at(loc) is not _ABSENT

    def clean(self, loc: Loc) -> bool:
        """No error at ``loc``, inside it, or at a mapping or list that holds it."""
        return not any(bad[: len(loc)] == loc or loc[: len(bad)] == bad for bad in self._bad)

    def value(self, loc: Loc, default: Any = None) -> Any:
        """The value at ``loc`` as written if it passed its checks; ``default`` if absent; None if wrong."""
        if not self.clean(loc):
            return None
        value = self._at(loc)
        return default if value is _ABSENT else value

    def items(self, loc: Loc) -> List[Tuple[int, Any]]:
        """``(index, item)`` of the list at ``loc`` (none if it is not a list)."""
        value = self._at(loc)
        return list(enumerate(value)) if isinstance(value, tuple) else []

    def line(self, loc: Loc) -> int:
        """The line ``loc`` is written on."""
        return self._node(loc).start_mark.line + 1

    def unique(self, seen: Dict[Any, Tuple[str, int]], key: Any, loc: Loc, problem: str, label: str) -> None:
        """Report ``problem`` at ``loc`` if ``key`` is in ``seen`` (saying where), else note ``label`` for it."""
        if key in seen:
            self.report(loc, f"{problem} (also {seen[key][0]} at line {seen[key][1]})")
        else:
            seen[key] = (label, self.line(loc))


def _unknown_key(key: str, allowed: Tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(allowed)}"
    return f"unknown key '{key}' ({hint})"


def _keys_at(schema: type, loc: Loc) -> Tuple[str, ...]:
    """The keys of the mapping at ``loc`` of a document checked as ``schema``."""
    for part in loc:
        if isinstance(part, str):
            schema = _dataclass_in(get_type_hints(schema)[part])
    return tuple(field.name for field in dataclasses.fields(schema))


def _dataclass_in(annotation: Any) -> Optional[type]:
    """The dataclass in an annotation such as ``Tuple[CellConfig, ...]``."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    return next(filter(None, map(_dataclass_in, get_args(annotation))), None)
