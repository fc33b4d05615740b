"""The cluster the Telegram-across-processes tests run: aLAN processes behind one webhook URL, sharing a database.

Two "processes" are two real `serve()`s in the test's event loop, each with its own python-telegram-bot
Application, turn scheduler, conversation engine and database connections, listening on its own port; what
they share is the database (SQLite, and PostgreSQL), the fake Bot API server and the fake Ollama, as processes
behind a load balancer share PostgreSQL, Telegram and the LLM server. The test is the load balancer: it POSTs
each update, with Telegram's secret header, to the process it picks.

A process that dies without a word is the database state it leaves behind (its claim, its inbox rows, the words it
stored), written with the same store operations a process uses; one that stops is a `serve()` cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from alan.settings import Settings
from bot.telegram.app import serve
from bot.telegram.webhook import SECRET_HEADER, derived_secret
from engine.conversation import Conversation
from engine.store.models import ChatClaim, InboxUpdate
from engine.store.repository import Store
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.telegram_server import TOKEN, FakeTelegram
from tests.fakes.telegram_webhook_info import FakeTelegramWithWebhookInfo
from tests.postgres import DATABASES, database_url_for
from tests.test_telegram import FAST

ANN = {"id": 1001, "is_bot": False, "first_name": "Ann"}
BOB = {"id": 2002, "is_bot": False, "first_name": "Bob"}
HOOK = "https://alan.example.org/telegram/hook"
# Short: a process stopping mid-turn leaves it to the others at once rather than after FAST's 20 s.
OPTIONS = replace(FAST, stop_grace_s=0.2)
DEAD = "gone-host:8443:4242:abcdef"  # a process that died: it renews nothing
# A lease the tests wait out, once: long enough not to lapse early on a loaded machine (a slow start, a slow post).
SHORT_LEASE_S = 6.0


@pytest.fixture(params=DATABASES, name="database_url")
def every_database(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL, each time on a new, empty database."""
    return database_url_for(request)


@dataclass
class Node:
    """One aLAN process of the cluster."""

    port: int
    task: asyncio.Task[None] | None  # None: a process of its own (`alan run`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram/hook"

    def owns(self, owner: str) -> bool:
        return owner.startswith(f"{socket.gethostname()}:{self.port}:")


class Cluster:
    """Starts processes on one database and one fake Telegram, and posts updates to them as a load balancer."""

    def __init__(self, telegram: FakeTelegram, database_url: str, ports: Callable[[], int]) -> None:
        self.telegram = telegram
        self.database_url = database_url
        self.ports = ports
        self.nodes: list[Node] = []
        self.update_ids = count(500)
        self.http = aiohttp.ClientSession()
        self._starts = 0

    async def start(self, conversation: Conversation, *, port: int | None = None) -> Node:
        """A process, returned once it serves (it has set the webhook, or found it set)."""
        port = port or self.ports()
        config = Settings(
            _env_file=None,  # type: ignore[call-arg]
            telegram_token=TOKEN, telegram_api_url=self.telegram.api_url, database_url=self.database_url,
            telegram_allowed_users="", telegram_webhook_url=HOOK, telegram_webhook_port=port,
            telegram_webhook_secret=None,  # each derives it from the token: the same in all of them
        )  # fmt: skip
        node = Node(port, asyncio.create_task(serve(config, conversation, options=OPTIONS)))
        self.nodes.append(node)
        self._starts += 1
        # Each start ends with one of these: setWebhook by the first, getWebhookInfo (found set) by the others.
        registered = lambda: len(self.telegram.received("setWebhook")) + len(self.telegram.received("getWebhookInfo"))  # noqa: E731
        await self.telegram.wait_until(lambda: registered() >= self._starts or node.task.done(), within=30)
        if node.task.done():
            node.task.result()  # serve() failed: show why
        return node

    def started_elsewhere(self) -> None:
        """A process started outside (`alan run`) has registered: the next start waits for one more."""
        self._starts += 1

    async def stop(self, node: Node) -> None:
        if node.task is None:
            return
        node.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.task

    def update(
        self, chat: dict[str, Any], user: dict[str, Any], text: str | None = None, **content: Any
    ) -> dict[str, Any]:
        self.telegram.add_chat(chat)
        message = self.telegram.message(chat, user, text=text, **content)
        return {"update_id": next(self.update_ids), "message": message}

    def press(self, user: dict[str, Any], message: dict[str, Any], data: str) -> dict[str, Any]:
        """The update of `user` pressing the inline button with `data` under `message`."""
        return {"update_id": next(self.update_ids), "callback_query": self.telegram.callback_query(user, message, data)}

    async def post(self, node: Node, update: dict[str, Any]) -> int:
        async with self.http.post(node.url, json=update, headers={SECRET_HEADER: derived_secret(TOKEN)}) as response:
            return response.status

    async def close(self) -> None:
        for node in self.nodes:
            await self.stop(node)
        await self.http.close()


@pytest.fixture(name="cluster")
async def a_cluster(
    database_url: str, store: Store, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    async with FakeTelegramWithWebhookInfo() as telegram:
        made = Cluster(telegram, database_url, unused_tcp_port_factory)
        try:
            yield made
        finally:
            await made.close()


def said_in(cluster: Cluster, chat_id: int) -> list[str]:
    return [call.params["caption"] for call in cluster.telegram.sent("sendVoice", chat_id)]


def users_words(ollama: FakeOllama) -> list[list[str]]:
    """What the person had said, as each LLM request shows it: the history, then the words being answered."""
    return [[m["content"] for m in request["messages"] if m["role"] == "user"] for request in ollama.chat_requests]


def rows(store: Store) -> list[InboxUpdate]:
    with store.sessions() as session:
        return list(session.scalars(select(InboxUpdate).order_by(InboxUpdate.update_id)))


def claims(store: Store) -> dict[str, str]:
    with store.sessions() as session:
        held = session.scalars(select(ChatClaim)).all()
        return {claim.chat: claim.owner for claim in held if not claim.chat.startswith("#")}  # "#…": not chats
