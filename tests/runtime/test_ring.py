"""Placement ring properties: even spread, minimal movement, stability across processes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from raygrain.actors import ActorId
from raygrain.runtime import ConsistentHashRing

KEYS = [ActorId("test.Thing", k) for k in range(100_000)]


def test_keys_spread_evenly_over_four_silos() -> None:
    ring = ConsistentHashRing([f"silo-{i}" for i in range(4)])
    counts = Counter(ring.owner(k) for k in KEYS)
    mean = len(KEYS) / 4
    assert len(counts) == 4
    assert all(abs(c - mean) / mean < 0.10 for c in counts.values()), counts


def test_adding_a_fifth_silo_moves_about_a_fifth_of_the_keys() -> None:
    four = ConsistentHashRing([f"silo-{i}" for i in range(4)])
    five = ConsistentHashRing([f"silo-{i}" for i in range(5)])
    moved = [k for k in KEYS if four.owner(k) != five.owner(k)]
    assert 0.15 <= len(moved) / len(KEYS) <= 0.25
    assert all(five.owner(k) == "silo-4" for k in moved)  # only to the newcomer


def test_removing_a_silo_moves_only_its_keys() -> None:
    four = ConsistentHashRing([f"silo-{i}" for i in range(4)])
    three = ConsistentHashRing([f"silo-{i}" for i in range(3)])
    assert all(four.owner(k) == three.owner(k) for k in KEYS[:20_000] if four.owner(k) != "silo-3")


def test_owner_is_the_same_in_another_process() -> None:
    # A fresh interpreter has a different hash() salt; placement must not change with it.
    code = (
        "from actors import ActorId; from runtime import ConsistentHashRing;"
        "r = ConsistentHashRing(['a', 'b', 'c']);"
        "print([r.owner(ActorId('t', k)) for k in ['x', 'y', 1, 2, 'z' * 50]])"
    )
    ring = ConsistentHashRing(["a", "b", "c"])
    here = [ring.owner(ActorId("t", k)) for k in ["x", "y", 1, 2, "z" * 50]]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == str(here)
    assert ActorId("t", "1").stable_hash() != ActorId("t", 1).stable_hash()


def test_empty_ring_raises_lookup_error() -> None:
    import pytest

    with pytest.raises(LookupError):
        ConsistentHashRing([]).owner(KEYS[0])


def test_ranges_of_a_silo_hold_exactly_the_hashes_it_owns() -> None:
    import random

    ring = ConsistentHashRing(["a", "b", "c"], virtual_nodes=64)
    ranges = {silo: ring.ranges_of(silo) for silo in ring.silos}
    rng = random.Random(3)
    samples = [0, 1, 2**64 - 1, *ring._points[:5], *(rng.getrandbits(64) for _ in range(2000))]
    for value in samples:
        holders = [s for s, rs in ranges.items() if any(low < value <= high for low, high in rs)]
        assert holders == [ring.owner_of_hash(value)], value
    assert ConsistentHashRing([]).ranges_of("a") == []
    assert ConsistentHashRing(["a"], virtual_nodes=4).ranges_of("a") == [(-1, 2**64 - 1)]
