"""The app-wide turn scheduler's order: in order within a chat, round-robin across chats, at most `concurrency` at
once; and the old per-platform TurnQueue's tests, ported.

Cancelled and failing turns are tested in test_scheduler_cancellation.py; the bounds on waiting, waiting notices and
light turns in test_scheduler_waiting.py.

No test depends on timing: jobs start and finish only when the test lets them (`Jobs`, in
tests/scheduler_helpers.py), and every "what ran next" is read from the order the jobs started in.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from alan.scheduler import SchedulerFullError, TurnScheduler
from tests.scheduler_helpers import Jobs, assert_idle, notifications_done, submit

# --- The old per-platform TurnQueue's tests, ported ------------------------------------------------------------


async def test_turns_of_one_chat_run_in_order_and_chats_run_in_parallel() -> None:
    scheduler = TurnScheduler(concurrency=2, max_waiting=10)
    jobs = Jobs()
    a1 = await submit(scheduler, "a", jobs.job("a1"))
    a2 = await submit(scheduler, "a", jobs.job("a2"))
    b1 = await submit(scheduler, "b", jobs.job("b1"))
    assert [await jobs.next_start(), await jobs.next_start()] == ["a1", "b1"]
    assert jobs.running == {"a1", "b1"}  # chat b runs alongside chat a
    assert "a2" not in jobs.started  # it waits for a1
    jobs.release("b1")
    assert await b1 == "b1"
    assert "a2" not in jobs.started and scheduler.running == 1  # a slot is free, but a2 must wait for a1
    jobs.release("a1")
    assert await jobs.next_start() == "a2"
    jobs.release("a2")
    assert await asyncio.gather(a1, a2) == ["a1", "a2"]
    assert jobs.started.index("a2") > jobs.finished.index("a1")  # in order within chat a
    assert_idle(scheduler)


async def test_a_full_scheduler_refuses_at_once_and_waiters_are_told() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=2)
    jobs = Jobs()
    told: asyncio.Queue[int] = asyncio.Queue()

    async def on_wait(position: int) -> None:
        told.put_nowait(position)

    first = await submit(scheduler, "a", jobs.job("a"))
    second = await submit(scheduler, "b", jobs.job("b"), on_wait=on_wait)
    third = await submit(scheduler, "c", jobs.job("c"), on_wait=on_wait)
    assert scheduler.waiting == 2
    assert [await told.get(), await told.get()] == [1, 2]
    with pytest.raises(SchedulerFullError, match="try again"):
        await scheduler.run("d", jobs.job("d"))
    for name in "abc":
        jobs.release(name)
    assert await asyncio.gather(first, second, third) == ["a", "b", "c"]
    assert "d" not in jobs.started
    assert_idle(scheduler)


async def test_a_failing_turn_frees_its_place() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=1)

    async def broken() -> None:
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        await scheduler.run("a", broken)

    async def fine() -> str:
        return "ok"

    assert await scheduler.run("a", fine) == "ok"
    assert_idle(scheduler)


async def test_a_slow_wait_message_does_not_let_a_later_turn_overtake() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=5)
    jobs = Jobs()
    delivered = asyncio.Event()  # Telegram being slow to deliver "you're in the queue": not before the end

    async def slow_message(position: int) -> None:
        await delivered.wait()

    first = await submit(scheduler, "chat", jobs.job("first"))
    second = await submit(scheduler, "chat", jobs.job("second"), on_wait=slow_message)
    third = await submit(scheduler, "chat", jobs.job("third"))
    for name in ("first", "second", "third"):
        jobs.release(name)
    await asyncio.gather(first, second, third)
    assert jobs.started == ["first", "second", "third"]
    delivered.set()
    await notifications_done(scheduler)


async def test_one_chat_flooding_the_scheduler_does_not_lock_other_chats_out() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20, max_per_chat=3)
    jobs = Jobs()
    flood = [await submit(scheduler, "a", jobs.job(f"a{i}")) for i in range(4)]  # one running, three waiting
    assert scheduler.waiting_in("a") == 3
    with pytest.raises(SchedulerFullError, match="wait for those"):
        await scheduler.run("a", jobs.job("a-refused"))
    other = await submit(scheduler, "b", jobs.job("b"))
    assert scheduler.waiting_in("b") == 1  # admitted, waiting for its turn
    for name in ["a0", "a1", "a2", "a3", "b"]:
        jobs.release(name)
    assert await asyncio.gather(*flood, other) == ["a0", "a1", "a2", "a3", "b"]
    assert_idle(scheduler)
    jobs.release("a-again")
    assert await scheduler.run("a", jobs.job("a-again")) == "a-again"
    assert "a-refused" not in jobs.started


# --- Fairness ---------------------------------------------------------------------------------------------------


async def test_a_chat_with_many_turns_does_not_starve_one_that_queued_later() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    a = [await submit(scheduler, "a", jobs.job(f"a{i}")) for i in range(1, 6)]
    b = await submit(scheduler, "b", jobs.job("b1"))
    assert await jobs.next_start() == "a1"
    assert scheduler.waiting == 5 and scheduler.waiting_in("a") == 4 and scheduler.waiting_in("b") == 1
    jobs.release("a1")
    assert await jobs.next_start() == "b1"  # right after a's running turn, not after all of a's
    jobs.release("b1")
    for name in ["a2", "a3", "a4", "a5"]:
        assert await jobs.next_start() == name
        jobs.release(name)
    await asyncio.gather(*a, b)
    assert jobs.started == ["a1", "b1", "a2", "a3", "a4", "a5"]
    assert jobs.most_at_once == 1
    assert_idle(scheduler)


async def test_three_chats_take_turns_round_robin() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    tasks = [await submit(scheduler, chat, jobs.job(f"{chat}{i}")) for chat in "abc" for i in range(1, 4)]
    expected = ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3"]
    for name in expected:
        assert await jobs.next_start() == name
        assert jobs.running == {name}
        jobs.release(name)
    await asyncio.gather(*tasks)
    assert jobs.started == expected
    assert_idle(scheduler)


async def test_a_chat_that_just_ran_lines_up_behind_chats_already_waiting() -> None:
    # The rotation is by when a chat lined up, so a newcomer doesn't jump ahead of a chat waiting since before.
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    tasks = [await submit(scheduler, "a", jobs.job("a1")), await submit(scheduler, "a", jobs.job("a2"))]
    tasks.append(await submit(scheduler, "b", jobs.job("b1")))
    assert await jobs.next_start() == "a1"
    jobs.release("a1")
    assert await jobs.next_start() == "b1"  # a is now behind b...
    tasks.append(await submit(scheduler, "c", jobs.job("c1")))  # ...and c, arriving later, behind a
    jobs.release("b1")
    assert await jobs.next_start() == "a2"
    jobs.release("a2")
    assert await jobs.next_start() == "c1"
    jobs.release("c1")
    await asyncio.gather(*tasks)
    assert_idle(scheduler)


async def test_turns_of_a_chat_stay_in_order_and_alone_with_two_running_at_once() -> None:
    scheduler = TurnScheduler(concurrency=2, max_waiting=20)
    jobs = Jobs()
    tasks = [await submit(scheduler, chat, jobs.job(f"{chat}{i}")) for chat in "ab" for i in range(1, 4)]
    assert [await jobs.next_start(), await jobs.next_start()] == ["a1", "b1"]
    jobs.release("b1")
    assert await jobs.next_start() == "b2"
    jobs.release("a1")
    assert await jobs.next_start() == "a2"
    jobs.release("b2")
    assert await jobs.next_start() == "b3"
    jobs.release("b3")
    await tasks[5]
    assert scheduler.running == 1 and jobs.running == {"a2"}  # a slot is free, but a3 waits for a2
    jobs.release("a2")
    assert await jobs.next_start() == "a3"
    jobs.release("a3")
    await asyncio.gather(*tasks)
    assert jobs.started == ["a1", "b1", "b2", "a2", "b3", "a3"]
    for chat in "ab":
        names = [name for name in jobs.started if name.startswith(chat)]
        assert names == [f"{chat}1", f"{chat}2", f"{chat}3"]
        for earlier, later in itertools.pairwise(names):
            assert jobs.finished.index(earlier) < jobs.started.index(later)
    assert jobs.most_at_once == 2
    assert_idle(scheduler)


async def test_no_more_than_concurrency_turns_run_at_once() -> None:
    scheduler = TurnScheduler(concurrency=2, max_waiting=20)
    jobs = Jobs()
    tasks = [await submit(scheduler, chat, jobs.job(chat)) for chat in "abcd"]
    assert [await jobs.next_start(), await jobs.next_start()] == ["a", "b"]
    assert scheduler.running == 2 and scheduler.waiting == 2 and jobs.starts_pending() == 0
    jobs.release("b")
    assert await jobs.next_start() == "c"
    assert scheduler.running == 2 and scheduler.waiting == 1
    for name in "acd":
        jobs.release(name)
    await asyncio.gather(*tasks)
    assert jobs.most_at_once == 2
    assert_idle(scheduler)


async def test_raising_the_concurrency_starts_waiting_turns_at_once() -> None:
    scheduler = TurnScheduler(concurrency=1, max_waiting=20)
    jobs = Jobs()
    tasks = [await submit(scheduler, chat, jobs.job(chat)) for chat in "abc"]
    assert await jobs.next_start() == "a"
    scheduler.concurrency = 3  # e.g. the speech service can batch more
    assert [await jobs.next_start(), await jobs.next_start()] == ["b", "c"]
    assert scheduler.running == 3 and scheduler.waiting == 0
    scheduler.concurrency = 1  # lowering it lets the running ones finish
    more = await submit(scheduler, "d", jobs.job("d"))
    for name in "ab":
        jobs.release(name)
    await asyncio.gather(*tasks[:2])
    assert "d" not in jobs.started and scheduler.running == 1
    jobs.release("c")
    assert await jobs.next_start() == "d"
    jobs.release("d")
    await asyncio.gather(tasks[2], more)
    assert_idle(scheduler)
    with pytest.raises(ValueError):
        scheduler.concurrency = 0
    with pytest.raises(ValueError):
        TurnScheduler(concurrency=0)
