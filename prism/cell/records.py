"""Per-flow state records: a tracked connection as a plain JSON-able dict, and how two views of it merge."""

from __future__ import annotations

import hashlib
import math
import socket
from typing import Any, Dict, Mapping, Optional, Tuple

from prism.cell.entry import (
    ANCHOR_BOTH,
    FACT_BITS,
    SEQ_MASK,
    TOKEN_MAX,
    ConnEntry,
    Direction,
    FlowVerdict,
    facts_to_names,
    seq_later,
    state_of,
)
from prism.flows.identity import PROTO_TCP, FlowKey, ip_to_str

RECORD_SCHEMA = 2  #: 2: ``token``; version 0 allowed; removal records
#: Versions stay below 2**53: every JSON reader holds them exactly, and a
#: forged huge version could otherwise shadow the real primary for ever.
MAX_VERSION = (1 << 53) - 1
_SEQ_FIELDS = ("isn", "seq_end", "ack_max", "allowed_end", "fin_end")
_WINDOW_FIELDS = ("window", "max_window")
_MAX_WINDOW = 0xFFFF
_VERDICTS = {verdict.value: verdict for verdict in FlowVerdict}
#: Fields of ``entry_to_record`` for readers only (derivable, or the writing
#: cell's own counters): ``entry_to_wire_record`` leaves them out.
READER_ONLY_FIELDS = (
    "key", "state", "role", "primary_packets", "primary_bytes", "mirror_packets",
    "mirror_bytes", "dropped_packets",
)  # fmt: skip


class StateRecordError(ValueError):
    """A state record that cannot be applied; the message names the record and field."""


def entry_to_record(entry: ConnEntry) -> Dict[str, Any]:
    """The record of one entry (plain types only).

    A record (schema 2) holds the flow's key (fields and text), which side
    initiated it, its state and the facts the state derives from, its verdict,
    token and version, first/last seen, per-direction sequence state and this
    cell's counters::

        {"schema": 2, "flow_id": 123..., "key": "tcp 10.0.0.1:40000 <-> 10.0.0.2:80",
         "ip_version": 4, "proto": 6, "addr_a": "10.0.0.1", "port_a": 40000,
         "addr_b": "10.0.0.2", "port_b": 80, "initiator": "a",
         "state": "ESTABLISHED", "facts": ["syn_orig", "syn_reply", "handshake_done"],
         "verdict": "accept", "token": 3735928559, "version": 4,
         "first_seen": 12.5, "last_seen": 13.0,
         "orig": {"isn": 1000, "seq_end": 1001, "ack_max": 5001, "window": 502,
                  "max_window": 502, "allowed_end": ..., "fin_end": null},
         "reply": {...}, "packets": 3, "bytes": 180, "role": "primary",
         "primary_packets": 3, "primary_bytes": 180,
         "mirror_packets": 0, "mirror_bytes": 0, "dropped_packets": 0}

    ``state`` and ``role`` are for readers; a receiver derives the state from the
    facts. ``packets`` and ``bytes`` are the flow's frames in both directions
    as its primaries counted them (``ConnEntry.packets``): a receiver keeps the
    larger count (optional: a record without them counts 0). The other
    counters describe the cell that wrote the record and are never merged
    into another cell's. Version 0 is a flow no primary has versioned yet (a
    mirror copy created it).
    """
    record = _key_fields(entry.key)
    record.update({
        "initiator": "a" if entry.orig_forward else "b",
        "state": entry.state.value,
        "facts": list(facts_to_names(entry.facts)),
        "verdict": entry.verdict.value,
        "token": entry.token,
        "version": entry.version,
        "first_seen": entry.first_seen,
        "last_seen": entry.last_seen,
        "orig": entry.orig.as_dict(),
        "reply": entry.reply.as_dict(),
        "packets": entry.packets,
        "bytes": entry.bytes,
        "role": entry.role,
        "primary_packets": entry.primary_packets,
        "primary_bytes": entry.primary_bytes,
        "mirror_packets": entry.mirror_packets,
        "mirror_bytes": entry.mirror_bytes,
        "dropped_packets": entry.dropped_packets,
    })  # fmt: skip
    return record


def entry_to_wire_record(entry: ConnEntry) -> Dict[str, Any]:
    """The record of one entry as replicated: only the fields ``record_to_entry`` reads.

    Like ``entry_to_record`` without the key text, the state name, the role
    and the writing cell's counters (a third less JSON, and no text to
    format); addresses are written by ``inet_ntop``.
    """
    record = _wire_key_fields(entry.key)
    record.update({
        "initiator": "a" if entry.orig_forward else "b",
        "facts": list(facts_to_names(entry.facts)),
        "verdict": entry.verdict.value,
        "token": entry.token,
        "version": entry.version,
        "first_seen": entry.first_seen,
        "last_seen": entry.last_seen,
        "orig": entry.orig.as_dict(),
        "reply": entry.reply.as_dict(),
        "packets": entry.packets,
        "bytes": entry.bytes,
    })  # fmt: skip
    return record


def _key_fields(key: FlowKey) -> Dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA,
        "flow_id": key.flow_id,
        "key": str(key),
        "ip_version": key.ip_version,
        "proto": key.proto,
        "addr_a": ip_to_str(key.addr_a),
        "port_a": key.port_a,
        "addr_b": ip_to_str(key.addr_b),
        "port_b": key.port_b,
    }


def _wire_key_fields(key: FlowKey) -> Dict[str, Any]:
    family = socket.AF_INET if key.ip_version == 4 else socket.AF_INET6
    return {
        "schema": RECORD_SCHEMA,
        "flow_id": key.flow_id,
        "ip_version": key.ip_version,
        "proto": key.proto,
        "addr_a": socket.inet_ntop(family, key.addr_a),
        "port_a": key.port_a,
        "addr_b": socket.inet_ntop(family, key.addr_b),
        "port_b": key.port_b,
    }


def wire_removal_record(key: FlowKey, version: int) -> Dict[str, Any]:
    """``removal_record`` as replicated (no key text)."""
    record = _wire_key_fields(key)
    record["removed"] = True
    record["version"] = version
    return record


def removal_record(key: FlowKey, version: int) -> Dict[str, Any]:
    """The record saying that the flow ``key`` is gone as of ``version`` (a tombstone).

    Its primary sends it when the flow expires, one version above the flow's
    last: a replica drops its entry and ignores older records of the key, and
    the next connection on the same key starts above it, so the old entry can
    never shadow the new one::

        {"schema": 2, "flow_id": ..., "key": ..., "ip_version": 4, "proto": 6,
         "addr_a": ..., "port_a": ..., "addr_b": ..., "port_b": ...,
         "removed": true, "version": 5}
    """
    record = _key_fields(key)
    record["removed"] = True
    record["version"] = version
    return record


def is_removal(record: Mapping) -> bool:
    """True for a removal record (``removal_record``)."""
    return isinstance(record, Mapping) and record.get("removed") is True


def record_to_removal(record: Mapping, index: int = 0) -> Tuple[FlowKey, int]:
    """Validate a removal record.

    Args:
        record: As made by ``removal_record`` (possibly via JSON).
        index: Its position in a batch, for error messages.

    Returns:
        The flow's key and the removal's version.

    Raises:
        StateRecordError: a field is missing, of the wrong type or inconsistent.
    """
    where = f"removal record {index}"
    key, _ = _record_key(record, where)
    return key, _int(record, "version", where, 1, MAX_VERSION)


def _record_key(record: Mapping, where: str) -> Tuple[FlowKey, bool]:
    """The key of a record and whether its a-side is the key's a-side."""
    if not isinstance(record, Mapping):
        raise StateRecordError(f"{where}: expected an object, got {type(record).__name__}")
    if record.get("schema") != RECORD_SCHEMA:
        raise StateRecordError(
            f"{where}: schema {record.get('schema')!r} is not {RECORD_SCHEMA} (cells of different versions?)"
        )
    proto = _int(record, "proto", where, 0, 0xFF)
    try:
        key, a_is_a = FlowKey.between(
            proto, _str(record, "addr_a", where), _int(record, "port_a", where, 0, 0xFFFF),
            _str(record, "addr_b", where), _int(record, "port_b", where, 0, 0xFFFF),
        )  # fmt: skip
    except ValueError as error:
        raise StateRecordError(f"{where}: bad flow key: {error}") from error
    if _int(record, "ip_version", where, 4, 6) != key.ip_version:
        raise StateRecordError(f"{where}: ip_version does not match the addresses")
    flow_id = record.get("flow_id")
    if flow_id is not None and flow_id != key.flow_id:
        raise StateRecordError(f"{where}: flow_id {flow_id} is not the key's ({key.flow_id})")
    return key, a_is_a


def record_to_entry(record: Mapping, index: int = 0) -> ConnEntry:
    """Validate a record and build a fresh entry from it (counters zero).

    Args:
        record: A record as made by ``entry_to_record`` (possibly via JSON).
        index: Its position in a batch, for error messages.

    Returns:
        The entry.

    Raises:
        StateRecordError: a field is missing, of the wrong type or inconsistent.
    """
    where = f"state record {index}"
    key, a_is_a = _record_key(record, where)
    initiator = record.get("initiator")
    if initiator not in ("a", "b"):
        raise StateRecordError(f"{where}: initiator must be 'a' or 'b', not {initiator!r}")
    facts = 0
    names = record.get("facts")
    if not isinstance(names, list):
        raise StateRecordError(f"{where}: facts must be a list of names")
    for name in names:
        if name not in FACT_BITS:
            raise StateRecordError(f"{where}: unknown fact {name!r} (known: {sorted(FACT_BITS)})")
        facts |= FACT_BITS[name]
    verdict = _VERDICTS.get(record.get("verdict"))
    if verdict is None:
        raise StateRecordError(f"{where}: verdict must be one of {sorted(_VERDICTS)}")
    first_seen = _float(record, "first_seen", where)
    entry = ConnEntry(key, key.proto == PROTO_TCP, (initiator == "a") == a_is_a, first_seen)
    entry.facts = facts
    entry.versioned_facts = facts
    entry.state = state_of(entry.is_tcp, facts)
    entry.verdict = verdict
    entry.token = _int(record, "token", where, 0, TOKEN_MAX)
    entry.version = _int(record, "version", where, 0, MAX_VERSION)
    entry.last_seen = _float(record, "last_seen", where)
    entry.orig = _direction(record, "orig", where)
    entry.reply = _direction(record, "reply", where)
    if "packets" in record:
        entry.base_packets = _int(record, "packets", where, 0, None)
    if "bytes" in record:
        entry.base_bytes = _int(record, "bytes", where, 0, None)
    if entry.is_tcp:
        entry.anchor = ANCHOR_BOTH
    return entry


def decision_digest(entry: ConnEntry) -> bytes:
    """A digest of what a flow's primary decided at its version: the tie-break between equal versions.

    Two cells that each believed they were the primary (a link flap) may
    have versioned different states under the same version. Every cell
    orders such records the same way, by this digest (the higher wins), so
    they all end up holding the same one. It covers what only a primary
    decides (initiator, versioned facts, verdict, token, first_seen), not
    what mirror copies update without a version (sequence numbers).
    """
    text = (f"{int(entry.orig_forward)}|{entry.versioned_facts}|{entry.verdict.value}|{entry.token}|"
            f"{entry.first_seen!r}")  # fmt: skip
    return hashlib.sha256(text.encode("ascii")).digest()


def merge_entry(local: ConnEntry, incoming: ConnEntry) -> None:
    """Fold a newer view of a connection (higher version) into the local entry.

    A higher version comes from the flow's primary, so what the primary
    decides comes from ``incoming``: verdict, token (unless it has none),
    first_seen and version. A different incarnation (other initiator or
    initial sequence number) replaces the local state. Otherwise facts are
    OR-ed (they only accumulate) and sequence numbers take the later value.
    Local counters are kept; the flow's counters (``packets``, ``bytes``)
    move up to the incoming ones. Both directions' positions now come (at
    least partly) from the record: they await confirmation (``anchor``).
    """
    same_incarnation = local.orig_forward == incoming.orig_forward and (
        local.orig.isn is None or incoming.orig.isn is None or local.orig.isn == incoming.orig.isn
    )
    if same_incarnation:
        local.facts |= incoming.facts
        _merge_direction(local.orig, incoming.orig)
        _merge_direction(local.reply, incoming.reply)
    else:
        local.orig_forward = incoming.orig_forward
        local.facts = incoming.facts
        local.orig = incoming.orig
        local.reply = incoming.reply
        local.token = 0
    local.first_seen = incoming.first_seen
    local.state = state_of(local.is_tcp, local.facts)
    local.verdict = incoming.verdict
    if incoming.token:
        local.token = incoming.token
    local.version = incoming.version
    local.versioned_facts = incoming.facts
    local.last_seen = max(local.last_seen, incoming.last_seen)
    local.count_from(incoming.base_packets, incoming.base_bytes)
    local.anchor |= incoming.anchor


def _merge_direction(local: Direction, incoming: Direction) -> None:
    if incoming.isn is not None:
        local.isn = incoming.isn
    local.seq_end = seq_later(local.seq_end, incoming.seq_end)
    local.ack_max = seq_later(local.ack_max, incoming.ack_max)
    local.allowed_end = seq_later(local.allowed_end, incoming.allowed_end)
    if local.fin_end is None:
        local.fin_end = incoming.fin_end
    local.window = incoming.window
    local.max_window = max(local.max_window, incoming.max_window)


# --- field validation ---------------------------------------------------------------
def _int(record: Mapping, name: str, where: str, low: int, high: Optional[int]) -> int:
    value = record.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateRecordError(f"{where}: {name} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        raise StateRecordError(f"{where}: {name} {value} out of range")
    return value


def _float(record: Mapping, name: str, where: str) -> float:
    value = record.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise StateRecordError(f"{where}: {name} must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value):  # an infinite last_seen would never expire
        raise StateRecordError(f"{where}: {name} must be finite, not {value}")
    return value


def _str(record: Mapping, name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise StateRecordError(f"{where}: {name} must be a string, not {value!r}")
    return value


def _direction(record: Mapping, name: str, where: str) -> Direction:
    data = record.get(name)
    if not isinstance(data, Mapping):
        raise StateRecordError(f"{where}: {name} must be an object")
    direction = Direction()
    for field_name in _SEQ_FIELDS:
        value = data.get(field_name)
        if value is not None:
            value = _int(data, field_name, f"{where}.{name}", 0, SEQ_MASK)
        setattr(direction, field_name, value)
    for field_name in _WINDOW_FIELDS:
        setattr(direction, field_name, _int(data, field_name, f"{where}.{name}", 0, _MAX_WINDOW))
    return direction
