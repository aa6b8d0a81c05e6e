"""The controller's generation: a number stored durably that every start increases (fencing).

The controller stamps ``directory`` and ``profiles`` with it
(``ryu_apps.mgmt_channel``); a cell refuses those of a generation below the
highest it has applied (``prism.cell.smm_view``). A controller that
restarted, or a second one started later, thus takes over, and the one it
replaced can no longer move the cells back.

The file holds the generation as decimal text; it is replaced atomically
(``prism.atomic``), so a crash leaves the old number or the new one, never
a torn one. A new generation is also at least the wall clock's seconds
(passed in): a lost file, or a second controller with a file of its own,
still starts above any controller that ran before, unless that one
restarted more than once a second on average.
"""

from __future__ import annotations

from pathlib import Path

from prism.atomic import atomic_write

#: Largest generation (JSON readers hold it exactly).
MAX_GENERATION = (1 << 53) - 1
FILE_MODE = 0o600


class GenerationError(RuntimeError):
    """The generation file cannot be read or written; the message names it."""


def next_generation(path: str, now: float) -> int:
    """Read the generation in ``path``, store it plus one, and return the new one.

    Args:
        path: The generation file (created with its directory if missing).
        now: Wall-clock seconds: the floor of the new generation.

    Raises:
        GenerationError: the file holds something else than a generation, or cannot be written.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as error:
        raise GenerationError(f"the generation file {path} cannot be read: {error}") from None
    if text:
        if not text.isdigit() or int(text) >= MAX_GENERATION:
            raise GenerationError(f"the generation file {path} holds {text[:40]!r}, not a generation "
                                  f"(a number below 2**53); remove it only if no other controller runs")  # fmt: skip
        stored = int(text)
    else:
        stored = 0
    generation = max(stored + 1, int(now))
    try:
        atomic_write(target, lambda handle: handle.write(f"{generation}\n".encode("ascii")), FILE_MODE)
    except OSError as error:
        raise GenerationError(f"the generation file {path} cannot be written: {error}") from None
    return generation
