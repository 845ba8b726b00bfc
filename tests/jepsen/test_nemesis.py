"""Faults as data: schedules drawn from a seed, and the grudges of the partition variants."""

from __future__ import annotations

import random

import pytest

from jepsen_like.generator import Generator, Workload
from jepsen_like.nemesis import KINDS, grudge_for, make_schedule


def test_schedule_is_a_function_of_the_seed() -> None:
    kinds = ["kill", "pause", "partition", "restart-all"]
    a = make_schedule(kinds, 60, random.Random(7))
    b = make_schedule(kinds, 60, random.Random(7))
    c = make_schedule(kinds, 60, random.Random(8))
    assert a == b and a != c
    assert {f.kind for f in a} == set(kinds)
    for f in a:
        assert f.variant in KINDS[f.kind]
        assert f.at_s >= 2.0 and f.at_s + f.duration_s <= 58.0
    starts = [f.at_s for f in a]
    assert starts == sorted(starts)
    for x, y in zip(a, a[1:], strict=False):
        assert x.at_s + x.duration_s < y.at_s  # one after another


def test_short_runs_still_get_a_fault() -> None:
    for kind in KINDS:
        sched = make_schedule([kind], 8, random.Random(1))
        assert len(sched) >= 1, kind


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown nemesis"):
        make_schedule(["flood"], 10, random.Random(1))


def _hears(grudge: dict[int, set[int]], nodes: list[int]) -> dict[int, set[int]]:
    return {i: set(nodes) - grudge[i] for i in nodes}


@pytest.mark.parametrize("n", [3, 5])
def test_ring_every_node_hears_a_different_majority(n: int) -> None:
    nodes = list(range(1, n + 1))
    grudge, _ = grudge_for("ring", nodes, None, random.Random(3))
    hears = _hears(grudge, nodes)
    for i in nodes:
        assert i in hears[i] and len(hears[i]) == n // 2 + 1
    assert len({frozenset(h) for h in hears.values()}) == n
    if n == 5:  # a real ring: links are symmetric, each node has two neighbours
        for i in nodes:
            for j in hears[i] - {i}:
                assert i in hears[j]


def test_halves_bridge_link_leader() -> None:
    nodes = [1, 2, 3, 4, 5]
    rng = random.Random(5)
    grudge, half = grudge_for("halves", nodes, None, rng)
    other = set(nodes) - set(half)
    for i in half:
        assert grudge[i] == other
    for i in other:
        assert grudge[i] == set(half)
    grudge, half = grudge_for("halves-leader", nodes, 3, rng)
    assert 3 in half and len(half) == 2 and grudge[3] == set(nodes) - set(half)
    grudge, (bridge,) = grudge_for("bridge", nodes, None, rng)
    assert grudge[bridge] == set()
    assert all(bridge not in g for g in grudge.values())
    assert sum(len(g) for g in grudge.values()) == 8  # 2 x 2 nodes cut both ways
    grudge, pair = grudge_for("link", nodes, None, rng)
    assert sum(len(g) for g in grudge.values()) == 2 and grudge[pair[0]] == {pair[1]}
    grudge, (x, y) = grudge_for("one-way", nodes, None, rng)
    assert grudge[y] == {x} and sum(len(g) for g in grudge.values()) == 1
    grudge, (lead,) = grudge_for("leader", nodes, 4, rng)
    assert lead == 4 and grudge[4] == {1, 2, 3, 5}
    assert all(grudge[i] == {4} for i in nodes if i != 4)


def test_generator_is_deterministic_per_process() -> None:
    g1, g2 = Generator(Workload(), 11), Generator(Workload(), 11)
    a = [g1.enqueue(0) for _ in range(20)]
    b = [g2.enqueue(0) for _ in range(20)]
    assert a == b
    assert len({op.value for op in a}) == 20
    assert all(op.dedup_id == f"v{op.value}" for op in a)
    assert all((op.group is not None) == (op.queue == "jqf") for op in a)
