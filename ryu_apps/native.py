"""Work the controller's green threads must not wait for, run in eventlet's pool of native threads."""

from __future__ import annotations

from typing import Callable


def in_native_thread(function: Callable, *args):
    """Run ``function(*args)`` in eventlet's pool of native threads; green threads keep running."""
    from eventlet import tpool  # the Ryu process's eventlet

    return tpool.execute(function, *args)
