"""Per-flow state records: a tracked connection as a plain JSON-able dict, and how two views of it merge."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from prism.cell.entry import (
    FACT_BITS,
    SEQ_MASK,
    ConnEntry,
    Direction,
    FlowVerdict,
    facts_to_names,
    seq_later,
    state_of,
)
from prism.flows import PROTO_TCP, FlowKey, ip_to_str

RECORD_SCHEMA = 1
_SEQ_FIELDS = ("isn", "seq_end", "ack_max", "allowed_end", "fin_end")
_WINDOW_FIELDS = ("window", "max_window")
_MAX_WINDOW = 0xFFFF
_VERDICTS = {verdict.value: verdict for verdict in FlowVerdict}


class StateRecordError(ValueError):
    """A state record that cannot be applied; the message names the record and field."""


def entry_to_record(entry: ConnEntry) -> Dict[str, Any]:
    """The record of one entry (plain types only).

    A record (schema 1) holds the flow's key (fields and text), which side
    initiated it, its state and the facts the state derives from, its verdict and
    version, first/last seen, per-direction sequence state and this cell's
    counters::

        {"schema": 1, "flow_id": 123..., "key": "tcp 10.0.0.1:40000 <-> 10.0.0.2:80",
         "ip_version": 4, "proto": 6, "addr_a": "10.0.0.1", "port_a": 40000,
         "addr_b": "10.0.0.2", "port_b": 80, "initiator": "a",
         "state": "ESTABLISHED", "facts": ["syn_orig", "syn_reply", "handshake_done"],
         "verdict": "accept", "version": 4, "first_seen": 12.5, "last_seen": 13.0,
         "orig": {"isn": 1000, "seq_end": 1001, "ack_max": 5001, "window": 502,
                  "max_window": 502, "allowed_end": ..., "fin_end": null},
         "reply": {...}, "role": "primary", "primary_packets": 3, "primary_bytes": 180,
         "mirror_packets": 0, "mirror_bytes": 0, "dropped_packets": 0}

    ``state`` and ``role`` are for readers; a receiver derives the state from the
    facts. Counters describe the cell that wrote the record and are never merged
    into another cell's.
    """
    key = entry.key
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
        "initiator": "a" if entry.orig_forward else "b",
        "state": entry.state.value,
        "facts": list(facts_to_names(entry.facts)),
        "verdict": entry.verdict.value,
        "version": entry.version,
        "first_seen": entry.first_seen,
        "last_seen": entry.last_seen,
        "orig": entry.orig.as_dict(),
        "reply": entry.reply.as_dict(),
        "role": entry.role,
        "primary_packets": entry.primary_packets,
        "primary_bytes": entry.primary_bytes,
        "mirror_packets": entry.mirror_packets,
        "mirror_bytes": entry.mirror_bytes,
        "dropped_packets": entry.dropped_packets,
    }


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
    entry = ConnEntry(key, proto == PROTO_TCP, (initiator == "a") == a_is_a, first_seen)
    entry.facts = facts
    entry.state = state_of(entry.is_tcp, facts)
    entry.verdict = verdict
    entry.version = _int(record, "version", where, 1, None)
    entry.last_seen = _float(record, "last_seen", where)
    entry.orig = _direction(record, "orig", where)
    entry.reply = _direction(record, "reply", where)
    return entry


def merge_entry(local: ConnEntry, incoming: ConnEntry) -> None:
    """Fold a newer view of a connection (higher version) into the local entry.

    A different incarnation (other initiator or initial sequence number)
    replaces the local state. Otherwise facts are OR-ed (they only
    accumulate), sequence numbers take the later value, and the verdict and
    version come from ``incoming``. Local counters are kept.
    """
    same_incarnation = local.orig_forward == incoming.orig_forward and (
        local.orig.isn is None or incoming.orig.isn is None or local.orig.isn == incoming.orig.isn
    )
    if same_incarnation:
        local.facts |= incoming.facts
        _merge_direction(local.orig, incoming.orig)
        _merge_direction(local.reply, incoming.reply)
        local.first_seen = min(local.first_seen, incoming.first_seen)
    else:
        local.orig_forward = incoming.orig_forward
        local.facts = incoming.facts
        local.orig = incoming.orig
        local.reply = incoming.reply
        local.first_seen = incoming.first_seen
    local.state = state_of(local.is_tcp, local.facts)
    local.verdict = incoming.verdict
    local.version = incoming.version
    local.last_seen = max(local.last_seen, incoming.last_seen)


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
    return float(value)


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
