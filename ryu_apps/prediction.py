"""The model services in the Ryu process: ``models.service`` with reloads in a native thread.

Loading and checking a model takes a second or two that the controller's green
threads must not wait for, so the services the director app builds run their
loads through ``eventlet.tpool`` (``in_native_thread``). Everything else is
``models.service`` (framework-free, also used by the evaluation's controller row).
"""

from __future__ import annotations

from typing import Any, Callable

from models.service import AgingService as _AgingService
from models.service import ModelError, load_model
from models.service import ModelService as _ModelService
from ryu_apps.native import in_native_thread

__all__ = ["AgingService", "ModelError", "ModelService", "in_native_thread", "load_model"]


class ModelService(_ModelService):
    """``models.service.ModelService`` loading in a native thread by default."""

    def __init__(self, config, load: Callable[[str], Any] = load_model,
                 run: Callable[..., Any] = in_native_thread) -> None:  # fmt: skip
        super().__init__(config, load, run)


class AgingService(_AgingService):
    """``models.service.AgingService`` loading in a native thread by default."""

    def __init__(self, config, load: Callable[[str], Any] = load_model,
                 run: Callable[..., Any] = in_native_thread) -> None:  # fmt: skip
        super().__init__(config, load, run)
