"""The schema's building blocks: validators whose errors read as the YAML was written, and addresses.

The settings dataclasses (``prism.config.types`` and beside each section's
checks) carry these validators in their annotations; pydantic uses them only
when it reads a YAML document, never when the code builds a setting itself.

Each validator rejects a value with a message in the configuration's words;
``{kind}``, ``{shown}`` and ``{text}`` in it are filled from the value's YAML
node (``prism.config.document``): its kind (``a string``), its quoted text
(or its kind, for a mapping or a list) and its text as written.
"""

import ipaddress
import math
import re
from typing import Any, Callable, NoReturn, Optional, Tuple

from pydantic import BeforeValidator, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

#: A section's ``__pydantic_config__``: a key that is not a field is an error.
FORBID = ConfigDict(extra="forbid")
MAX_UDP_PORT = 65535
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>[0-9]+)")
Address = Tuple[str, int]


def fail(message: str) -> NoReturn:
    """Reject the value being checked with ``message`` (see the module's docstring for its fields)."""
    raise PydanticCustomError("prism", message)


def integer(minimum: int, maximum: Optional[int] = None) -> PlainValidator:
    """An integer within ``[minimum, maximum]``."""

    def check(value: Any) -> int:
        if type(value) is not int:
            fail("expected an integer, got {kind}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            fail(f"must be an integer {bound}, got {value}")
        return value

    return PlainValidator(check)


def number(what: str = "a number of seconds", maximum: Optional[float] = None) -> PlainValidator:
    """A finite number > 0 (and <= ``maximum``), as a float."""
    bound = "> 0" if maximum is None else f"> 0 and <= {maximum:g}"

    def check(value: Any) -> float:
        if type(value) not in (int, float):
            fail(f"expected {what}, got {{shown}}")
        if not (math.isfinite(value) and 0 < value <= (math.inf if maximum is None else maximum)):
            fail(f"{what} must be {bound}, got {{text}}")
        return float(value)

    return PlainValidator(check)


def probability() -> PlainValidator:
    """A number within [0, 1], as a float."""

    def check(value: Any) -> float:
        if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
            fail("expected a probability between 0 and 1, got {shown}")
        return float(value)

    return PlainValidator(check)


def text(what: str, pattern: Optional[str] = None, rule: str = "") -> PlainValidator:
    """A non-empty string; with ``pattern``, one that matches it (else ``rule`` is the message)."""

    def check(value: Any) -> str:
        if type(value) is not str:
            quote = "" if value is None or isinstance(value, (dict, tuple)) else " (quote it: '{text}')"
            fail(f"{what} must be a string, got {{kind}}{quote}")
        if not value.strip():
            fail(f"{what} must not be empty")
        if pattern is not None and not re.fullmatch(pattern, value):
            fail(rule)
        return value

    return PlainValidator(check)


def choice(*choices: str) -> PlainValidator:
    """One of ``choices``."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            fail(f"expected one of {', '.join(choices)}, got {{shown}}")
        return value

    return PlainValidator(check)


def flag() -> PlainValidator:
    """``true`` or ``false``."""

    def check(value: Any) -> bool:
        if type(value) is not bool:
            fail("expected true or false, got {shown}")
        return value

    return PlainValidator(check)


def listed(plural: str, what: Optional[str] = None, wrong: Optional[str] = None) -> BeforeValidator:
    """A list (of at least one ``what``, if given); the list's type checks each item.

    Args:
        plural: What the items are, for ``expected a list of ...``.
        what: One item, for ``at least one ... is required``; None: the list may be empty.
        wrong: The message for both problems instead.
    """

    def check(value: Any) -> Any:
        if type(value) is not tuple:
            fail(wrong or f"expected a list of {plural}, got {{kind}}")
        if what is not None and not value:
            fail(wrong or f"at least one {what} is required")
        return value

    return BeforeValidator(check)


def checked_by(validator: PlainValidator) -> Callable[[Any], Any]:
    """The check function of a validator made here, to build a stricter one on it."""
    return validator.func


def parse_address(text: str) -> Optional[Address]:
    """``"IP:PORT"`` or ``"[IPv6]:PORT"`` as ``(ip, port)``, or None if it is not one."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None:
        return None
    try:
        host = ipaddress.ip_address(match.group("v6") or match.group("v4"))
    except ValueError:
        return None
    port = int(match.group("port"))
    if (host.version == 6) != (match.group("v6") is not None) or not 1 <= port <= MAX_UDP_PORT:
        return None
    return str(host), port


def format_address(address: Address) -> str:
    """The text form :func:`parse_address` reads."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(what: str) -> PlainValidator:
    """An ``IP:PORT`` string, as ``(ip, port)``."""
    as_text = checked_by(text(what))

    def check(value: Any) -> Address:
        found = parse_address(as_text(value))
        if found is None:
            fail(f"{what} {{shown}} is not IP:PORT (e.g. 172.30.0.10:7700 or [fd00::a]:7700; "
                 f"a UDP port 1-{MAX_UDP_PORT}, no host names)")  # fmt: skip
        return found

    return PlainValidator(check)
