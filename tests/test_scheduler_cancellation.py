"""The turn scheduler when a turn ends early: cancelled while waiting, as its go comes, or while running, or failing.

Each must give back its place in line and its slot, and leave its chat's other turns to run in order.

No test depends on timing: jobs start and finish only when the test lets them (`Jobs`, in
tests/scheduler_helpers.py), and every "what ran next" is read from the order the jobs started in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from alan.scheduler import TurnScheduler
from tests.scheduler_helpers import Jobs, assert_idle, submit

# --- Cancellation -------------------------------------------------------------------------------------------------


async def test_a_turn_cancelled_while_waiting_leaves_the_line_and_does_not_block_its_chat() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20, max_per_chat=2)
    jobs = Jobs()
    a1 = await submit(scheduler, "a", jobs.job("a1"))
    a2 = await submit(scheduler, "a", jobs.job("a2"))
    a3 = await submit(scheduler, "a", jobs.job("a3"))
    b1 = await submit(scheduler, "b", jobs.job("b1"))
    assert await jobs.next_start() == "a1"
    assert scheduler.waiting == 3 and scheduler.waiting_in("a") == 2
    a2.cancel()
    b1.cancel()  # the only turn of chat b: b leaves the rotation too
    for task in (a2, b1):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert scheduler.waiting == 1 and scheduler.waiting_in("a") == 1 and scheduler.waiting_in("b") == 0
    assert "b" not in scheduler._chats and "b" not in scheduler._ready
    a4 = await submit(scheduler, "a", jobs.job("a4"))  # the per-chat bound counts a3 and a4 only
    jobs.release("a1")
    assert await jobs.next_start() == "a3"
    jobs.release("a3")
    assert await jobs.next_start() == "a4"
    jobs.release("a4")
    assert await asyncio.gather(a1, a3, a4) == ["a1", "a3", "a4"]
    assert "a2" not in jobs.started and "b1" not in jobs.started
    assert_idle(scheduler)


async def test_a_turn_cancelled_just_as_its_go_comes_is_skipped() -> None:
    # The running job cancels the next waiter and finishes in the same step, so the scheduler hands out the go
    # before the cancelled caller has left the line: it must pass the go to the turn after.
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    victims: list[asyncio.Task[Any]] = []

    async def cancels_next() -> str:
        victims[0].cancel()
        return "first"

    gate = asyncio.Event()

    async def first() -> str:
        await gate.wait()
        return await cancels_next()

    t1 = await submit(scheduler, "a", first)
    victims.append(await submit(scheduler, "a", jobs.job("a2")))
    t3 = await submit(scheduler, "a", jobs.job("a3"))
    gate.set()
    assert await t1 == "first"
    assert await jobs.next_start() == "a3"
    with pytest.raises(asyncio.CancelledError):
        await victims[0]
    assert scheduler.waiting == 0 and scheduler.running == 1
    jobs.release("a3")
    assert await t3 == "a3"
    assert "a2" not in jobs.started
    assert_idle(scheduler)


async def test_a_turn_cancelled_after_its_go_but_before_starting_frees_the_slot() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    later: list[asyncio.Task[Any]] = []

    async def first_then_cancel_next() -> None:
        await scheduler.run("a", jobs.job("a1"))  # on return a2 has its go, but its task hasn't resumed yet
        later[0].cancel()

    driver = asyncio.create_task(first_then_cancel_next())
    await asyncio.sleep(0)
    later.append(await submit(scheduler, "a", jobs.job("a2")))
    later.append(await submit(scheduler, "a", jobs.job("a3")))
    assert await jobs.next_start() == "a1"
    jobs.release("a1")
    await driver
    with pytest.raises(asyncio.CancelledError):
        await later[0]
    assert await jobs.next_start() == "a3"  # a2's slot was given back and passed on
    assert scheduler.running == 1 and scheduler.waiting == 0
    jobs.release("a3")
    assert await later[1] == "a3"
    assert "a2" not in jobs.started
    assert_idle(scheduler)


async def test_cancelling_a_running_turn_frees_its_slot() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    a1 = await submit(scheduler, "a", jobs.job("a1"))
    a2 = await submit(scheduler, "a", jobs.job("a2"))
    b1 = await submit(scheduler, "b", jobs.job("b1"))
    assert await jobs.next_start() == "a1"
    a1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a1
    assert await jobs.next_start() == "b1"
    jobs.release("b1")
    assert await jobs.next_start() == "a2"
    jobs.release("a2")
    assert await asyncio.gather(a2, b1) == ["a2", "b1"]
    assert "a1" not in jobs.finished
    assert_idle(scheduler)


# --- Failures -----------------------------------------------------------------------------------------------------


async def test_a_job_exception_reaches_its_caller_and_the_scheduler_keeps_going() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    gate = asyncio.Event()

    async def broken() -> None:
        await gate.wait()
        raise RuntimeError("model crashed")

    failing = await submit(scheduler, "a", broken)
    behind = await submit(scheduler, "a", jobs.job("a2"))
    other = await submit(scheduler, "b", jobs.job("b1"))
    gate.set()
    with pytest.raises(RuntimeError, match="model crashed"):
        await failing
    assert await jobs.next_start() == "b1"  # b was waiting before a lined up again
    jobs.release("b1")
    assert await jobs.next_start() == "a2"  # the turn behind the failed one still runs
    jobs.release("a2")
    assert await asyncio.gather(behind, other) == ["a2", "b1"]
    assert_idle(scheduler)
