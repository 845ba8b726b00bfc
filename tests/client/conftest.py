"""Fixtures of the client tests: a fake three-node cluster on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.client.fake import FakeCluster


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[FakeCluster]:
    """Three fake nodes, node 1 leading; stopped with the test's nursery."""
    cluster = FakeCluster(3, leader_id=1)
    await cluster.start(nursery)
    yield cluster
    for node in cluster.nodes.values():
        node.stop()
