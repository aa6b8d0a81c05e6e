"""What the controller needs at start besides its configuration: the management key, its generation, saved placements.

Both stop ``ryu-manager`` at start with a message saying what to fix
(``SystemExit``), as a bad configuration does: a controller that cannot
authenticate its cells, or cannot fence an older controller, must not run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Optional

from prism.config.types import DEFAULT_GENERATION_FILE, DEFAULT_MGMT_KEY_ENV, PrismConfig
from prism.director.core import MirroringDirector
from prism.mgmt.generation import GenerationError, next_generation
from prism.placement.store import load_placements
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth, MgmtKeyError, key_bytes, read_key_file

PLACEMENTS_FILE = "placements.json"


def management_key(config: PrismConfig, environ: Mapping[str, str] = os.environ) -> bytes:
    """The key from ``management.key_file``, else the variable ``management.key_env`` (default PRISM_MGMT_KEY).

    Raises:
        SystemExit: no key, or an unusable one.
    """
    management = config.management
    try:
        if management.key_file:
            return read_key_file(management.key_file)
        name = management.key_env or DEFAULT_MGMT_KEY_ENV
        text = environ.get(name, "")
        if not text.strip():
            raise MgmtKeyError(f"no management key: set management.key_file in {config.source}, or the "
                               f"environment variable {name} (every cell needs the same key: "
                               f"prism cell --mgmt-key-file)")  # fmt: skip
        return key_bytes(text, f"the environment variable {name}")
    except MgmtKeyError as error:
        raise SystemExit(f"PRISM: {error}") from None


def management_auth(config: PrismConfig, environ: Mapping[str, str] = os.environ) -> Optional[MgmtAuth]:
    """The controller's sealing and opening, or None without ``management.listen`` (no channel)."""
    if config.management.listen is None:
        return None
    return MgmtAuth(management_key(config, environ), CONTROLLER_SENDER)


def placements_path(config: PrismConfig) -> str:
    """Where the controller saves flow placements: beside its generation file (``placements.json``)."""
    generation = Path(config.management.generation_file or DEFAULT_GENERATION_FILE)
    return str(generation.with_name(PLACEMENTS_FILE))


def restore_placements(directors: Mapping[int, MirroringDirector], path: str, logger) -> None:
    """Give every director the flow placements a previous controller saved in ``path`` (none: nothing)."""
    for dp_id, entries in load_placements(path).items():
        director = directors.get(dp_id)
        if director is not None:
            loaded = director.memory.load(entries, director.cell_ports)
            logger.info("switch %016x: %d flow placements from %s", dp_id, loaded, path)


def controller_generation(config: PrismConfig, now: Optional[float] = None) -> int:
    """The generation of this start (the stored one plus one, stored before it is used).

    Raises:
        SystemExit: the generation file cannot be read or written.
    """
    path = config.management.generation_file or DEFAULT_GENERATION_FILE
    try:
        return next_generation(path, time.time() if now is None else now)
    except GenerationError as error:
        raise SystemExit(f"PRISM: {error} (set management.generation_file in {config.source})") from None
