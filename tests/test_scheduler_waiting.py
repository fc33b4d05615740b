"""The turn scheduler's waiting turns: the bounds that refuse a turn, the notices waiters get, and light turns.

No test depends on timing: jobs start and finish only when the test lets them (`Jobs`, in
tests/scheduler_helpers.py), and every "what ran next" is read from the order the jobs started in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from alan.scheduler import BUSY, CHAT_BUSY, SchedulerFullError, TurnScheduler
from tests.scheduler_helpers import Jobs, assert_idle, notifications_done, submit

# --- Bounds -------------------------------------------------------------------------------------------------------


async def test_the_bounds_refuse_with_the_messages_for_the_user_and_count_nothing() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=3, max_per_chat=2)
    jobs = Jobs()
    tasks = [await submit(scheduler, "a", jobs.job(f"a{i}")) for i in range(3)]  # a0 running, two waiting
    with pytest.raises(SchedulerFullError) as chat_full:
        await scheduler.run("a", jobs.job("a-refused"))
    assert str(chat_full.value) == CHAT_BUSY
    tasks.append(await submit(scheduler, "b", jobs.job("b0")))  # the third waiting: the total is reached
    with pytest.raises(SchedulerFullError) as full:
        await scheduler.run("c", jobs.job("c-refused"))
    assert str(full.value) == BUSY
    assert scheduler.waiting == 3 and scheduler.waiting_in("a") == 2 and "c" not in scheduler._chats
    for name in ["a0", "a1", "a2", "b0"]:
        jobs.release(name)
    await asyncio.gather(*tasks)
    assert not {"a-refused", "c-refused"} & set(jobs.started)
    assert_idle(scheduler)


def test_the_messages_are_the_ones_users_see_today() -> None:
    assert BUSY == "I'm talking with a lot of people right now. Please try again in a minute."
    assert CHAT_BUSY == "I still have a few of your messages to answer: please wait for those before sending more."
    assert isinstance(SchedulerFullError(), Exception) and str(SchedulerFullError()) == BUSY


async def test_a_turn_that_can_start_at_once_is_not_refused_for_the_total() -> None:
    # max_waiting bounds waiting turns: one that takes a free slot right away doesn't wait.
    scheduler = TurnScheduler(concurrency=2, max_waiting=1)
    jobs = Jobs()
    a0 = await submit(scheduler, "a", jobs.job("a0"))
    a1 = await submit(scheduler, "a", jobs.job("a1"))  # waits for a0: the total is reached
    b0 = await submit(scheduler, "b", jobs.job("b0"))  # a slot is free: runs
    assert [await jobs.next_start(), await jobs.next_start()] == ["a0", "b0"]
    with pytest.raises(SchedulerFullError, match="try again"):
        await scheduler.run("c", jobs.job("c0"))  # both slots taken now
    for name in ["a0", "a1", "b0"]:
        jobs.release(name)
    await asyncio.gather(a0, a1, b0)
    assert_idle(scheduler)


# --- Waiting notices ----------------------------------------------------------------------------------------------


async def test_whoever_waits_is_told_their_position_and_nobody_else() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    told: list[tuple[str, int]] = []

    def on_wait(name: str) -> Callable[[int], Awaitable[None]]:
        async def tell(position: int) -> None:
            told.append((name, position))

        return tell

    tasks = [await submit(scheduler, "a", jobs.job("a1"), on_wait=on_wait("a1"))]  # starts at once: not told
    tasks.append(await submit(scheduler, "b", jobs.job("b1"), on_wait=on_wait("b1")))
    tasks.append(await submit(scheduler, "a", jobs.job("a2"), on_wait=on_wait("a2")))
    await notifications_done(scheduler)
    assert told == [("b1", 1), ("a2", 2)]
    for name in ["a1", "b1", "a2"]:
        jobs.release(name)
    await asyncio.gather(*tasks)
    assert told == [("b1", 1), ("a2", 2)]


async def test_a_failing_wait_notice_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()

    async def broken_notice(position: int) -> None:
        raise RuntimeError("Telegram is down")

    def not_a_coroutine(position: int) -> Awaitable[None]:
        raise TypeError("wrong callback")

    with caplog.at_level(logging.WARNING, logger="alan.scheduler"):
        first = await submit(scheduler, "a", jobs.job("a1"))
        second = await submit(scheduler, "b", jobs.job("b1"), on_wait=broken_notice)
        third = await submit(scheduler, "c", jobs.job("c1"), on_wait=not_a_coroutine)
        await notifications_done(scheduler)
        for name in ["a1", "b1", "c1"]:
            jobs.release(name)
        assert await asyncio.gather(first, second, third) == ["a1", "b1", "c1"]
    messages = [record.getMessage() for record in caplog.records]
    assert "could not tell a waiting user about the queue: Telegram is down" in messages
    assert "could not tell a waiting user about the queue" in messages  # the one that raised at once
    assert_idle(scheduler)


async def test_many_chats_leave_nothing_behind() -> None:
    scheduler = TurnScheduler(concurrency=3, max_waiting=200)

    async def echo(value: int) -> int:
        await asyncio.sleep(0)
        return value

    results = await asyncio.gather(*(scheduler.run(f"chat-{i % 50}", lambda i=i: echo(i)) for i in range(150)))
    assert results == list(range(150))
    assert_idle(scheduler)


async def test_a_turns_own_per_chat_bound_replaces_the_schedulers() -> None:
    # A Discord voice channel's turns are everyone's in it: the app's scheduler has no per-chat bound, and each
    # platform brings its own (Telegram: a few of one person's messages).
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    running = asyncio.create_task(scheduler.run("voice", hold))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(scheduler.run("voice", hold)) for _ in range(4)]
    await asyncio.sleep(0)
    assert scheduler.waiting_in("voice") == 4  # no bound of the scheduler's own
    with pytest.raises(SchedulerFullError, match="still have a few of your messages"):
        await scheduler.run("voice", hold, max_per_chat=4)
    release.set()
    await asyncio.gather(running, *waiting)
    assert_idle(scheduler)


# --- Light turns: a group's chatter keeps its place in line but never crowds out a turn ---------------------------


async def test_light_turns_keep_their_order_but_count_toward_no_bound_of_real_turns() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=1, max_per_chat=1, max_light_per_chat=2)
    jobs = Jobs()
    answer = await submit(scheduler, "group", jobs.job("answer"))
    assert await jobs.next_start() == "answer"
    # Two bits of chatter wait behind the answer; a third is one too many (of its own kind).
    chatter = [scheduler.submit("group", jobs.job(f"chat{i}"), light=True) for i in range(2)]
    with pytest.raises(SchedulerFullError):
        scheduler.submit("group", jobs.job("chat2"), light=True)
    # The chatter takes neither the chat's nor the app's place for real turns: the next question still gets in line.
    question = await submit(scheduler, "group", jobs.job("question"))
    with pytest.raises(SchedulerFullError):
        await scheduler.run("group", jobs.job("one too many"))
    for name in ("answer", "chat0", "chat1", "question"):
        if name != "answer":
            assert await jobs.next_start() == name  # in the order they came
        jobs.release(name)
    assert await asyncio.gather(answer, *chatter, question) == ["answer", "chat0", "chat1", "question"]
    assert_idle(scheduler)


async def test_submit_takes_the_place_in_line_before_it_returns() -> None:
    scheduler = TurnScheduler(concurrency=1)
    jobs = Jobs()
    first = scheduler.submit("a", jobs.job("first"))  # no await between them: the order is the calls'
    second = scheduler.submit("a", jobs.job("second"))
    assert scheduler.waiting + scheduler.running == 2
    assert await jobs.next_start() == "first"
    jobs.release("first")
    assert await jobs.next_start() == "second"
    jobs.release("second")
    assert await asyncio.gather(first, second) == ["first", "second"]
    assert_idle(scheduler)


async def test_a_submitted_turn_cancelled_before_it_ran_gives_back_its_place() -> None:
    scheduler = TurnScheduler(concurrency=1)
    jobs = Jobs()
    idle = scheduler.submit("a", jobs.job("never"), light=True)  # started at once: it holds the one slot…
    idle.cancel()  # …and is cancelled before its task took a step
    busy = await submit(scheduler, "b", jobs.job("b"))
    assert await jobs.next_start() == "b"  # the slot came back
    waiting = scheduler.submit("b", jobs.job("never either"))
    waiting.cancel()
    await asyncio.sleep(0)
    jobs.release("b")
    assert await busy == "b"
    assert "never" not in jobs.started and "never either" not in jobs.started
    assert_idle(scheduler)
