"""Buffers bounded in bytes: the budget itself, and the actors' mailboxes (MockClock, events)."""

from __future__ import annotations

import trio
import trio.testing

from node import machine
from node.actors import ActorSystem, Busy
from node.budget import ByteBudget
from node.loop_api import LoopView
from node.raft import Role, Standing


async def test_byte_budget_waits_until_the_bytes_fit_and_lets_a_big_item_into_an_empty_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    order: list[str] = []

    async def second() -> None:
        await budget.acquire(50)  # 110 > 100: waits for the first to be given back
        order.append("second in")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and budget.waits == 1
        order.append("first out")
        budget.release(60)
    assert order == ["first out", "second in"] and budget.used_bytes == 50
    budget.release(50)
    await budget.acquire(500)  # larger than the whole budget: it may go into an empty one
    assert budget.used_bytes == 500 and not budget.fits(1)


class _Leading:
    """What the actors ask of the Raft loop: it leads, and takes proposals (never applies)."""

    def __init__(self) -> None:
        self.view = LoopView(1, Role.LEADER, 1, 1, Standing.VOTER)
        self.proposed: list[object] = []

    @property
    def is_leader(self) -> bool:
        return True

    def submit(self, props: list[object]) -> None:
        self.proposed.extend(props)


async def test_a_mailbox_full_of_bytes_refuses_with_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    loop = _Leading()
    actors = ActorSystem(loop, mailbox_max_bytes=3000)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(actors.run)
        busy: list[str] = []

        async def send(body: bytes) -> None:
            try:
                await actors.submit(machine.make_enqueue("q", body), "q")
            except Busy as exc:
                busy.append(str(exc))

        # The actor proposes the first one at once and waits for it (never applied here);
        # the next ones stay in its mailbox: 2 of 1,200 bytes fit in 3,000, the third not.
        for _ in range(4):
            nursery.start_soon(send, b"x" * 1200)
            await trio.testing.wait_all_tasks_blocked()
        assert len(loop.proposed) == 1
        assert len(busy) == 1 and "holds" in busy[0]
        assert actors.stats["busy"] == 1
        nursery.cancel_scope.cancel()
