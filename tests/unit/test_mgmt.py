"""The management protocol's codec: round trips, and garbage gives None, never an exception."""

from __future__ import annotations

import json
import zlib

import pytest

from prism.mgmt import protocol as mgmt


def raw(body: bytes) -> bytes:
    """A datagram with a valid header around an arbitrary (compressed) body."""
    return mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(body)


def test_round_trip():
    message = {"type": "heartbeat", "cell": "cell1", "seq": 3, "flows": 10}
    assert mgmt.decode(mgmt.encode(message)) == message


def test_encode_refuses_unknown_types():
    with pytest.raises(ValueError):
        mgmt.encode({"type": "reboot"})


@pytest.mark.parametrize("datagram", [
    b"", b"PR", b"XX\x01\x00" + zlib.compress(b"{}"), b"PR\x09\x00" + zlib.compress(b"{}"),
    b"PR\x01\x00not zlib at all",
    raw(b"\xff\xfe not utf-8"), raw(b"[1, 2]"), raw(b'{"no": "type"}'),
    raw(b'{"type": "reboot"}'),
    raw(json.dumps({"type": []}).encode()),  # unhashable type
    raw(json.dumps({"type": {"a": 1}}).encode()),
    raw(b"[" * 200_000),  # nesting deep enough to exhaust the parser's recursion
    mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(b" " * (mgmt.MAX_MESSAGE_BYTES + 10)),
])  # fmt: skip
def test_garbage_decodes_to_none(datagram):
    assert mgmt.decode(datagram) is None
