"""LaneStats, the snapshot policies see: a plain (mypyc-native) class that keeps the
NamedTuple conveniences the policies and tests use."""
from __future__ import annotations

import pytest

from streamserve.lanes import LaneRole, LaneStats

FIELDS = ("lane_id", "role", "healthy", "num_waiting", "num_running", "tokens_queued", "kv_usage",
          "kv_free_tokens", "max_num_seqs", "max_waiting", "step_time", "utilisation", "acceptance_rate",
          "spec_k", "pair", "tp", "context_tokens", "block_size")


def test_positional_fields_in_order_and_defaults() -> None:
    values = (3, LaneRole.DECODE, False, 4, 5, 600, 0.25, 7000, 64, 99, 0.02, 0.5, 0.7, 3, 1, 2, 800, 32)
    s = LaneStats(*values)
    assert tuple(getattr(s, name) for name in FIELDS) == values
    d = LaneStats(1, LaneRole.PREFILL)
    assert (d.healthy, d.kv_free_tokens, d.max_num_seqs, d.max_waiting, d.acceptance_rate, d.tp, d.block_size) == (
        True, None, 256, 1024, None, 1, 16)


def test_replace_changes_only_the_named_fields() -> None:
    s = LaneStats(2, LaneRole.DECODE, num_waiting=1, tokens_queued=100, context_tokens=500, pair=0)
    t = s._replace(num_waiting=3, tokens_queued=900)
    assert (t.num_waiting, t.tokens_queued) == (3, 900)
    assert (s.num_waiting, s.tokens_queued) == (1, 100)  # the original is untouched
    assert all(getattr(t, name) == getattr(s, name) for name in FIELDS if name not in ("num_waiting", "tokens_queued"))
    with pytest.raises(TypeError, match="no field 'bogus'"):
        s._replace(bogus=1)


def test_room_and_outstanding() -> None:
    s = LaneStats(0, LaneRole.COLOCATED, num_waiting=2, num_running=3, max_waiting=3)
    assert s.outstanding == 5 and s.has_room
    assert not s._replace(num_waiting=3).has_room
    assert not s._replace(kv_usage=1.0).has_room
    assert not s._replace(healthy=False).has_room
    assert "num_waiting=2" in repr(s)
