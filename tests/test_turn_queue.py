from __future__ import annotations

import asyncio

import pytest

from bot.turn_queue import QueueFull, TurnQueue


async def test_turns_of_one_chat_run_in_order_and_chats_run_in_parallel() -> None:
    queue = TurnQueue(concurrency=2, max_waiting=10)
    log: list[str] = []
    both_running = asyncio.Event()
    running: set[str] = set()

    async def turn(name: str, chat: str) -> str:
        running.add(chat)
        if len(running) == 2:
            both_running.set()
        log.append(f"start {name}")
        await asyncio.sleep(0.01)
        log.append(f"end {name}")
        running.discard(chat)
        return name

    results = await asyncio.gather(
        queue.run("a", lambda: turn("a1", "a")),
        queue.run("a", lambda: turn("a2", "a")),
        queue.run("b", lambda: turn("b1", "b")),
    )
    assert results == ["a1", "a2", "b1"]
    assert log.index("end a1") < log.index("start a2")  # in order within chat a
    assert both_running.is_set()  # chat b ran alongside chat a


async def test_a_full_queue_refuses_at_once_and_waiters_are_told() -> None:
    queue = TurnQueue(concurrency=1, max_waiting=2)
    release = asyncio.Event()
    told: list[int] = []

    async def slow() -> None:
        await release.wait()

    async def on_wait(position: int) -> None:
        told.append(position)

    first = asyncio.create_task(queue.run("a", slow))
    await asyncio.sleep(0)
    second = asyncio.create_task(queue.run("b", slow, on_wait=on_wait))
    third = asyncio.create_task(queue.run("c", slow, on_wait=on_wait))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert queue.waiting == 2 and told == [1, 2]
    with pytest.raises(QueueFull, match="try again"):
        await queue.run("d", slow)
    release.set()
    await asyncio.gather(first, second, third)
    assert queue.waiting == 0


async def test_a_failing_turn_frees_its_place() -> None:
    queue = TurnQueue(concurrency=1, max_waiting=1)

    async def broken() -> None:
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        await queue.run("a", broken)

    async def fine() -> str:
        return "ok"

    assert await queue.run("a", fine) == "ok"
    assert queue.waiting == 0


async def test_a_slow_wait_message_does_not_let_a_later_turn_overtake() -> None:
    queue = TurnQueue(concurrency=1, max_waiting=5)
    release = asyncio.Event()
    order: list[str] = []

    async def job(name: str) -> None:
        if name == "first":
            await release.wait()
        order.append(name)

    async def slow_message(position: int) -> None:
        await asyncio.sleep(0.05)  # Telegram being slow to deliver "you're in the queue"

    first = asyncio.create_task(queue.run("chat", lambda: job("first")))
    await asyncio.sleep(0)
    second = asyncio.create_task(queue.run("chat", lambda: job("second"), on_wait=slow_message))
    await asyncio.sleep(0)
    third = asyncio.create_task(queue.run("chat", lambda: job("third")))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, second, third)
    assert order == ["first", "second", "third"]


async def test_one_chat_flooding_the_queue_does_not_lock_other_chats_out() -> None:
    queue = TurnQueue(concurrency=1, max_waiting=20, max_per_chat=3)
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    flood = [asyncio.create_task(queue.run("a", slow)) for _ in range(4)]  # one running, three waiting
    await asyncio.sleep(0)
    assert queue.waiting_in("a") == 3
    with pytest.raises(QueueFull, match="wait for those"):
        await queue.run("a", slow)
    other = asyncio.create_task(queue.run("b", slow))
    await asyncio.sleep(0)
    assert queue.waiting_in("b") == 1  # admitted, waiting for its turn
    release.set()
    assert await asyncio.gather(*flood, other) == ["done"] * 5
    assert queue.waiting == 0 and await queue.run("a", slow) == "done"
