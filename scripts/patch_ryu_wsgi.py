"""Make Ryu 4.34's ``ryu/app/wsgi.py`` import with eventlet >= 0.30 (idempotent).

Ryu 4.34 does ``from eventlet.wsgi import ALREADY_HANDLED``; eventlet removed
that name in 0.30 (eventlet PR #544), so ``ryu-manager`` cannot even start with
any eventlet that imports on Python 3.11 (>= 0.33.3). Ryu is unmaintained and
its fix (PR #166) was never merged or released, so ``scripts/setup.sh`` runs
this script on the installed file.

The patch makes the import tolerant: on ImportError it falls back to an empty
response body. That is what eventlet >= 0.30 needs: its websocket handler sets
``eventlet.wsgi.WSGI_LOCAL.already_handled`` itself, and the server then writes
nothing more for the request. Running this again on a patched file changes
nothing; a file that matches neither form is an error (exit code 1).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARKER = "PRISM patch"

ORIGINAL = """\
    from eventlet.wsgi import ALREADY_HANDLED
    _ALREADY_HANDLED = ALREADY_HANDLED
"""

PATCHED = """\
    # PRISM patch (scripts/patch_ryu_wsgi.py, as Ryu's unmerged PR #166):
    # eventlet >= 0.30 has no ALREADY_HANDLED; it marks a websocket request as
    # handled itself (eventlet.wsgi.WSGI_LOCAL.already_handled), so an empty
    # body is the right answer there.
    try:
        from eventlet.wsgi import ALREADY_HANDLED
    except ImportError:
        ALREADY_HANDLED = ()
    _ALREADY_HANDLED = ALREADY_HANDLED
"""


def wsgi_path() -> Path:
    """Where the installed ``ryu/app/wsgi.py`` is (without importing it)."""
    spec = importlib.util.find_spec("ryu.app.wsgi")
    if spec is None or spec.origin is None:
        raise SystemExit("patch_ryu_wsgi: ryu is not installed in this Python")
    return Path(spec.origin)


def patch(path: Path) -> str:
    """Patch ``path`` in place; returns what happened ("patched" or "already patched")."""
    text = path.read_text(encoding="utf-8")
    if MARKER in text:
        return "already patched"
    if text.count(ORIGINAL) != 1:
        raise SystemExit(
            f"patch_ryu_wsgi: {path} does not contain the expected ALREADY_HANDLED import; "
            "is this Ryu 4.34? Update scripts/patch_ryu_wsgi.py for this version."
        )
    path.write_text(text.replace(ORIGINAL, PATCHED), encoding="utf-8")
    return "patched"


def main() -> int:
    """Patch the installed Ryu and report it on stderr."""
    path = wsgi_path()
    print(f"patch_ryu_wsgi: {path}: {patch(path)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
