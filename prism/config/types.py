"""The configuration's settings types, its problems, and the error that lists them.

A section's dataclass is its schema too: the validators in its annotations
(``prism.config.fields``) check it when a YAML document is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Dict, List, Optional, Tuple

from prism.config.fields import FORBID, Address, address, integer, number, text
from prism.mgmt.auth import DEFAULT_MGMT_KEY_ENV  # noqa: F401  (the shells take it from here)
from prism.mgmt.protocol import DEFAULT_STATE_INTERVAL_S, DEFAULT_TAKEOVER_TOLERANCE_BYTES

if TYPE_CHECKING:  # pragma: no cover - defined beside their checks
    from prism.config.bfd import BfdConfig
    from prism.config.telemetry import PredictionConfig, TelemetryConfig
    from prism.config.etcd import EtcdConfig

DEFAULT_IDLE_TIMEOUT_S = 10
DEFAULT_REPLICATION_FACTOR = 1
DEFAULT_MAX_REPLICATION_FACTOR = 2
MAX_PORT_NUMBER = 0xFFFF_FF00  #: OFPP_MAX: ports above are OpenFlow reserved ports
MAX_DPID = 2**64 - 1
SEVERITY_ERROR = "error"
SEVERITY_WARNING = "warning"
DEFAULT_HEARTBEAT_INTERVAL_S = 0.1
DEFAULT_DEAD_AFTER_INTERVALS = 3.5  #: dead_after defaults to this many heartbeat intervals
DEFAULT_ALIVE_AFTER_S = 1.0
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NOT_ENV_NAME = "{shown} is not an environment variable name (letters, digits, _)"


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a configuration file.

    Attributes:
        source: File name as given.
        line: 1-based line, 0 if the problem has no position (unreadable file).
        column: 1-based column.
        path: Key path such as ``switches[0].cells[1].port`` ('' for the whole file).
        message: What is wrong, and where the conflicting item is.
        severity: ``'error'`` or ``'warning'``.
    """

    source: str
    line: int
    column: int
    path: str
    message: str
    severity: str = SEVERITY_ERROR

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}: " if self.line else f"{self.source}: "
        kind = "warning: " if self.severity == SEVERITY_WARNING else ""
        path = f"{self.path}: " if self.path else ""
        return f"{where}{kind}{path}{self.message}"


class ConfigError(Exception):
    """A configuration with errors; ``problems`` lists every one (warnings too)."""

    def __init__(self, problems: List[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def errors(self) -> Tuple[ConfigProblem, ...]:
        """The problems that are errors (not warnings)."""
        return tuple(p for p in self.problems if p.severity == SEVERITY_ERROR)


@dataclass(frozen=True)
class CellConfig:
    """A cell: its id, the switch port it hangs on, its management ``(ip, udp_port)`` if any."""

    __pydantic_config__ = FORBID

    id: Annotated[str, text("cell id")]
    port: Annotated[int, integer(1, MAX_PORT_NUMBER)]
    mgmt: Annotated[Optional[Address], address("cell management address")] = None


#: Where the controller keeps its generation when ``management.generation_file`` is not set.
DEFAULT_GENERATION_FILE = "/var/lib/prism/controller-generation"


@dataclass(frozen=True)
class ManagementConfig:
    """The management network as the controller sees it (``management:`` section).

    Attributes:
        listen: The controller's UDP ``(ip, port)`` for heartbeats and reports (None: no channel).
        heartbeat_interval: Seconds between two heartbeats of a cell.
        dead_after: Seconds without a heartbeat after which a cell is dead (None given:
            ``DEFAULT_DEAD_AFTER_INTERVALS`` heartbeat intervals).
        alive_after: Seconds of unbroken heartbeats before a dead cell is used again.
        key_file: File holding the management key (resolved against the configuration's directory).
        key_env: Environment variable holding it (neither: ``DEFAULT_MGMT_KEY_ENV``).
        generation_file: Where the controller keeps its generation (resolved likewise;
            None: ``DEFAULT_GENERATION_FILE``).
        state_interval_s: Seconds between two progress records of a ``state`` flow
            (sent to the cells in the ``directory``).
        takeover_tolerance_bytes: How far beyond the replicated window a cell taking
            over a ``state`` flow accepts its packets (``directory``; see ``prism.mgmt.protocol``).
    """

    __pydantic_config__ = FORBID

    listen: Annotated[Optional[Address], address("management.listen")] = None
    heartbeat_interval: Annotated[float, number()] = DEFAULT_HEARTBEAT_INTERVAL_S
    dead_after: Annotated[float, number()] = None  # type: ignore[assignment]
    alive_after: Annotated[float, number()] = DEFAULT_ALIVE_AFTER_S
    key_file: Annotated[Optional[str], text("management.key_file")] = None
    key_env: Annotated[Optional[str], text("management.key_env", _ENV_NAME, _NOT_ENV_NAME)] = None
    generation_file: Annotated[Optional[str], text("management.generation_file")] = None
    state_interval_s: Annotated[float, number()] = DEFAULT_STATE_INTERVAL_S
    takeover_tolerance_bytes: Annotated[int, integer(0)] = DEFAULT_TAKEOVER_TOLERANCE_BYTES

    def __post_init__(self) -> None:
        if self.dead_after is None:
            object.__setattr__(self, "dead_after", self.heartbeat_interval * DEFAULT_DEAD_AFTER_INTERVALS)


@dataclass(frozen=True)
class RestConfig:
    """The REST API (``rest:`` section): its token source (neither: ``PRISM_REST_TOKEN``) and address.

    ``listen`` (``(ip, port)``) overrides ryu-manager's ``--wsapi-host/--wsapi-port``;
    without it the REST API listens on 127.0.0.1 unless ``--wsapi-host`` says otherwise.
    """

    __pydantic_config__ = FORBID

    token_env: Annotated[Optional[str], text("rest.token_env", _ENV_NAME, _NOT_ENV_NAME)] = None
    token_file: Annotated[Optional[str], text("rest.token_file")] = None
    listen: Annotated[Optional[Address], address("rest.listen")] = None


#: Flows each switch's director tracks at most by default (``limits.max_flows``).
DEFAULT_LIMIT_MAX_FLOWS = 1_000_000


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds of the controller's state (``limits:`` section).

    ``max_flows``: flows each switch's director tracks (FSC copy, assignments);
    new flows beyond go to their primary cell unmirrored and untracked.
    """

    __pydantic_config__ = FORBID

    max_flows: Annotated[int, integer(1)] = DEFAULT_LIMIT_MAX_FLOWS


@dataclass(frozen=True)
class OpenFlowConfig:
    """The OpenFlow listener (``openflow:`` section).

    ``listen`` (``(ip, port)``) overrides ryu-manager's ``--ofp-listen-host`` and
    ``--ofp-tcp-listen-port``; without it the director listens on 127.0.0.1
    unless ``--ofp-listen-host`` says otherwise (switches on other hosts need an address here).
    """

    __pydantic_config__ = FORBID

    listen: Annotated[Optional[Address], address("openflow.listen")] = None


@dataclass(frozen=True)
class SwitchConfig:
    """A fast-path switch: its datapath id, cells and edge ports."""

    dp_id: int
    name: str
    cells: Tuple[CellConfig, ...]
    edge_ports: Tuple[int, ...]

    @property
    def cell_ids(self) -> Tuple[str, ...]:
        """Ids of the cells, in configuration order."""
        return tuple(cell.id for cell in self.cells)

    @property
    def cell_ports(self) -> Dict[str, int]:
        """cell id -> port."""
        return {cell.id: cell.port for cell in self.cells}

    def cell_on_port(self, port: int) -> Optional[CellConfig]:
        """The cell on ``port``, or None."""
        return next((cell for cell in self.cells if cell.port == port), None)


@dataclass(frozen=True)
class PrismConfig:
    """A validated configuration.

    Attributes:
        switches: dp_id -> SwitchConfig.
        idle_timeout: Seconds of inactivity after which a flow's FSC entries expire.
        default_replication_factor: Mirrors per flow by default.
        max_replication_factor: The most mirrors any flow gets.
        management: The management network (heartbeats, failure detection).
        rest: The REST API's token source.
        telemetry: Where the stats collector writes (None: no telemetry).
        prediction: The predictive policy's model and budget (None: fixed replication factor).
        mirroring_mode: The fixed policy's mirroring mode, ``full`` or ``state`` (prism.placement.profiles).
        bfd: BFD between the switch and the cells (``prism.config.bfd``; None: no BFD).
        etcd: Several controllers through etcd (``prism.config.etcd.EtcdConfig``; None: one controller).
        source: Where it was read from.
        warnings: Problems that did not stop it from loading.
    """

    switches: Dict[int, SwitchConfig]
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT_S
    default_replication_factor: int = DEFAULT_REPLICATION_FACTOR
    max_replication_factor: int = DEFAULT_MAX_REPLICATION_FACTOR
    management: ManagementConfig = field(default_factory=ManagementConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    openflow: OpenFlowConfig = field(default_factory=OpenFlowConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    telemetry: Optional[TelemetryConfig] = None
    prediction: Optional[PredictionConfig] = None
    mirroring_mode: str = "full"
    bfd: Optional[BfdConfig] = None
    etcd: Optional[EtcdConfig] = None
    source: str = field(default="<string>", compare=False)
    warnings: Tuple[ConfigProblem, ...] = field(default=(), compare=False)

    @property
    def cell_count(self) -> int:
        """Number of cells over all switches."""
        return sum(len(switch.cells) for switch in self.switches.values())
