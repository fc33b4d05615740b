"""The app-wide turn scheduler: order within a chat, round-robin across chats, bounds, waiting notices, cancellation.

No test depends on timing: jobs start and finish only when the test lets them (`Jobs`), and every "what ran
next" is read from the order the jobs started in. The one timeout (`NEXT_START_LIMIT_S`) only keeps a broken
scheduler from hanging the suite.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from alan.scheduler import BUSY, CHAT_BUSY, SchedulerFullError, TurnScheduler

NEXT_START_LIMIT_S = 5.0


class Jobs:
    """Jobs named by the test: each records its start and then waits until the test releases it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.running: set[str] = set()
        self.most_at_once = 0
        self._starts: asyncio.Queue[str] = asyncio.Queue()
        self._release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def job(self, name: str) -> Callable[[], Awaitable[str]]:
        async def job() -> str:
            self.started.append(name)
            self.running.add(name)
            self.most_at_once = max(self.most_at_once, len(self.running))
            self._starts.put_nowait(name)
            try:
                await self._release[name].wait()
            finally:
                self.running.discard(name)
            self.finished.append(name)
            return name

        return job

    def release(self, name: str) -> None:
        self._release[name].set()

    async def next_start(self) -> str:
        """The name of the next job to start (waiting for it if none has started since the last call)."""
        return await asyncio.wait_for(self._starts.get(), NEXT_START_LIMIT_S)

    def starts_pending(self) -> int:
        return self._starts.qsize()


async def submit(
    scheduler: TurnScheduler,
    chat: str,
    job: Callable[[], Awaitable[Any]],
    **kwargs: Any,
) -> asyncio.Task[Any]:
    """Start `scheduler.run` in a task and yield once, so the turn has taken its place (or started) on return."""
    task = asyncio.create_task(scheduler.run(chat, job, **kwargs))
    await asyncio.sleep(0)
    return task


def assert_idle(scheduler: TurnScheduler) -> None:
    """Nothing counted and nothing remembered: idle chats must not stay in the scheduler's maps."""
    assert scheduler.waiting == 0 and scheduler.running == 0
    assert not scheduler._chats and not scheduler._ready


async def notifications_done(scheduler: TurnScheduler) -> None:
    await asyncio.gather(*list(scheduler._notifications), return_exceptions=True)


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
