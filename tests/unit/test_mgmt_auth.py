"""The authenticated envelope: sealing, the checks before any decompression, replay windows, keys."""

from __future__ import annotations

import os
import zlib

import pytest

from prism.mgmt import protocol as mgmt
from prism.mgmt.generation import GenerationError, next_generation
from prism.mgmt.auth import (
    CONTROLLER_SENDER,
    MAX_SEALED_BYTES,
    MIN_KEY_CHARS,
    TAG_BYTES,
    AuthRefused,
    MgmtAuth,
    MgmtKeyError,
    Sealer,
    Verifier,
    key_bytes,
    new_key_text,
    read_key_file,
)

KEY = b"k" * 64
NOW = 1_700_000_000.0
HEARTBEAT = mgmt.encode({"type": "heartbeat", "cell": "c1", "seq": 1})


def refusal(verifier, datagram, now=NOW):
    with pytest.raises(AuthRefused) as caught:
        verifier.open(datagram, now)
    return caught.value.reason


def test_a_sealed_datagram_opens_once_with_its_sender_and_body():
    verifier = Verifier(KEY)
    datagram = Sealer(KEY, "c1").seal(HEARTBEAT, NOW)
    opened = verifier.open(datagram, NOW)
    assert (opened.sender, opened.body) == ("c1", HEARTBEAT)
    assert refusal(verifier, datagram) == "replayed"


def test_counters_increase_within_one_microsecond_and_reordering_is_tolerated():
    sealer, verifier = Sealer(KEY, "c1"), Verifier(KEY)
    first, second, third = (sealer.seal(HEARTBEAT, NOW) for _ in range(3))
    for datagram in (third, first, second):  # reordered, each seen once
        verifier.open(datagram, NOW)
    assert refusal(verifier, first) == "replayed"


def test_a_restarted_sender_goes_on_above_its_old_counters():
    verifier = Verifier(KEY)
    verifier.open(Sealer(KEY, "c1").seal(HEARTBEAT, NOW), NOW)
    verifier.open(Sealer(KEY, "c1").seal(HEARTBEAT, NOW + 0.5), NOW + 0.5)  # a new process, no state kept


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad_tag"),  # tag altered
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "bad_tag"),  # body altered
    (lambda d: b"XX" + d[2:], "malformed"),
    (lambda d: d[:3] + b"\x00" + d[4:], "malformed"),  # sender length 0
    (lambda d: d[:TAG_BYTES], "malformed"),
    (lambda d: b"", "malformed"),
    (lambda d: d + b"\x00" * MAX_SEALED_BYTES, "oversized"),
    (lambda d: Sealer(b"other key" * 8, "c1").seal(HEARTBEAT, NOW), "bad_tag"),
])  # fmt: skip
def test_forged_and_damaged_envelopes_are_refused_with_a_reason(mutate, reason):
    assert refusal(Verifier(KEY), mutate(Sealer(KEY, "c1").seal(HEARTBEAT, NOW))) == reason


def test_counters_far_from_the_receivers_clock_are_stale():
    verifier = Verifier(KEY, max_age_s=30, max_skew_s=30)
    assert refusal(verifier, Sealer(KEY, "c1").seal(HEARTBEAT, NOW - 31)) == "stale"
    assert refusal(verifier, Sealer(KEY, "c1").seal(HEARTBEAT, NOW + 31)) == "stale"


def test_a_counter_behind_the_replay_window_is_refused():
    sealer, verifier = Sealer(KEY, "c1"), Verifier(KEY, replay_window_s=1.0)
    old = sealer.seal(HEARTBEAT, NOW)
    verifier.open(sealer.seal(HEARTBEAT, NOW + 2), NOW + 2)
    assert refusal(verifier, old, NOW + 2) == "replayed"


def test_nothing_is_inflated_before_the_tag_holds(monkeypatch):
    inflated = []
    monkeypatch.setattr(zlib, "decompressobj", lambda *a: inflated.append(a) or pytest.fail("inflated"))
    bomb = mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(b"{" + b" " * 10_000_000)
    forged = Sealer(b"z" * 64, "c1").seal(bomb, NOW)
    auth = MgmtAuth(KEY, "c2")
    assert auth.open(forged, NOW) is None and not inflated
    assert auth.counters.as_dict()["refused_bad_tag"] == 1


def test_a_key_holders_bomb_and_trailing_bytes_are_refused_after_a_capped_inflate():
    auth, sealer = MgmtAuth(KEY, "c2"), Sealer(KEY, "c1")
    bomb = mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(b" " * (mgmt.MAX_MESSAGE_BYTES + 1), 9)
    trailing = HEARTBEAT + b"junk"
    for body in (bomb, trailing):
        assert auth.open(sealer.seal(body, NOW), NOW) is None
    assert auth.counters.as_dict()["refused_undecodable"] == 2


@pytest.mark.parametrize("text", ['{"type":"heartbeat","cell":"c1","x":NaN}',
                                  '{"type":"heartbeat","cell":"c1","x":-Infinity}',
                                  '{"type":"heartbeat","cell":"c1","x":1e999}',
                                  '{"type":"heartbeat","cell":"c1","x":%d}' % (1 << 70)])  # fmt: skip
def test_non_finite_and_huge_numbers_do_not_decode(text):
    assert mgmt.decode(mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(text.encode())) is None


def test_encode_refuses_what_no_receiver_would_inflate():
    with pytest.raises(mgmt.MessageTooBig):
        mgmt.encode({"type": "assign", "flows": ["x" * mgmt.MAX_MESSAGE_BYTES]})
    with pytest.raises(ValueError):
        mgmt.encode({"type": "heartbeat", "cell": "c1", "x": float("nan")})


def test_a_message_naming_another_cell_than_its_sealer_is_refused():
    auth = MgmtAuth(KEY, CONTROLLER_SENDER)
    assert auth.open(Sealer(KEY, "c2").seal(HEARTBEAT, NOW), NOW) is None
    assert auth.counters.as_dict()["refused_wrong_sender"] == 1


def test_keys_from_text_and_files(tmp_path):
    assert key_bytes("  " + "a" * MIN_KEY_CHARS + "\n", "here") == b"a" * MIN_KEY_CHARS
    with pytest.raises(MgmtKeyError, match="at least"):
        key_bytes("short", "here")
    path = tmp_path / "mgmt.key"
    path.write_text(new_key_text())
    assert len(read_key_file(str(path))) == 64
    with pytest.raises(MgmtKeyError, match="cannot be read"):
        read_key_file(str(tmp_path / "missing"))


def test_the_generation_grows_at_every_start_and_is_stored(tmp_path):
    path = str(tmp_path / "state" / "generation")
    first = next_generation(path, 1000.0)
    assert first == 1000 and next_generation(path, 10.0) == 1001  # a clock set back: still above
    assert open(path).read().strip() == "1001" and os.stat(path).st_mode & 0o777 == 0o600
    assert next_generation(path, 5000.0) == 5000  # never below the clock's seconds
    (tmp_path / "bad").write_text("eleven")
    with pytest.raises(GenerationError, match="not a generation"):
        next_generation(str(tmp_path / "bad"), 1.0)
