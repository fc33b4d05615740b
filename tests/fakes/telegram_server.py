"""A local fake of Telegram's Bot API server, speaking its real HTTP protocol, for testing the real
python-telegram-bot client.

What it speaks (as in core.telegram.org/bots/api, "Making requests"): `POST /bot<token>/<method>` with
urlencoded, multipart or JSON parameters (python-telegram-bot sends urlencoded fields, JSON-encoding
non-string values, and multipart when it uploads a file), answered with `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": ..., "description": ..., "parameters": {"retry_after": ...}}`; files are
downloaded from `GET /file/bot<token>/<file_path>`. `getUpdates` long-polls a queue the test feeds, honouring
`offset` (earlier updates are confirmed and dropped) and `timeout`.

Every request is recorded (`calls`); a test can make the next N calls of a method fail with a 429, a 5xx or
a Bot API error, or answer slowly, and can wait for a request to arrive.

Usage::

    async with FakeTelegram() as server:
        chat = server.private_chat(ANN)
        server.push_message(chat, ANN, text="hello")
        [call] = await server.wait_for("sendVoice")
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer

TOKEN = "123456:TEST-token-for-the-fake-bot-api"
BOT_ID = 123456
BOT_USERNAME = "alan_test_bot"
MAX_LONG_POLL_S = 50.0


@dataclass
class Call:
    """One request as the server received it; parameter values are the raw strings that were sent."""

    method: str
    params: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)
    injected: str | None = None  # the failure this call was answered with, if any
    result: Any = None  # what the server answered (a sent Message as a dict, say)
    done: bool = False  # answered successfully
    at: float = field(default_factory=time.monotonic)

    def json(self, name: str) -> Any:
        value = self.params.get(name)
        return None if value is None else json.loads(value)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return None if value is None else int(value)

    @property
    def text(self) -> str:
        return self.params.get("text") or self.params.get("caption") or ""

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """(label, callback_data) of every inline button sent with this call."""
        markup = self.json("reply_markup") or {}
        rows = markup.get("inline_keyboard", [])
        return [(button["text"], button.get("callback_data", "")) for row in rows for button in row]


@dataclass
class _Failure:
    status: int
    description: str
    retry_after: int | None = None
    delay: float = 0.0  # a slow answer: wait this long, then answer normally (status 0) or fail


class FakeTelegram(LocalServer):
    client_max_size = 64 * 1024 * 1024  # voice notes and documents are uploaded whole

    def __init__(self, *, token: str = TOKEN, bot_id: int = BOT_ID, username: str = BOT_USERNAME) -> None:
        self.token = token
        self.bot_user = {"id": bot_id, "is_bot": True, "first_name": "aLAN", "username": username}
        self.calls: list[Call] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.file_sizes: dict[str, int] = {}  # what getFile reports, when a test wants it to differ
        self.webhook: dict[str, str] | None = None
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1000))
        self._chats: dict[int, dict[str, Any]] = {}
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._changed = asyncio.Condition()

    # --- lifecycle ---

    @property
    def api_url(self) -> str:
        return self.host

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)

    # --- scripting: what Telegram's users do ---

    def add_file(self, content: bytes, *, extension: str = "oga") -> str:
        """Store a file as if a user had uploaded it; returns its file_id."""
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (f"voice/{file_id}.{extension}", content)
        return file_id

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns its update_id."""
        update = {"update_id": next(self._update_ids), **update}
        for chat in _chats_in(update):
            self._chats[chat["id"]] = chat
        self._updates.append(update)
        self._notify()
        return update["update_id"]

    def push_message(
        self, chat: dict[str, Any], user: dict[str, Any], *, text: str | None = None, **content: Any
    ) -> dict[str, Any]:
        """Queue a message update; commands and @mentions in `text` get their entities, as Telegram sends."""
        message = self.message(chat, user, text=text, **content)
        self.push({"message": message})
        return message

    def message(
        self, chat: dict[str, Any], user: dict[str, Any], *, text: str | None = None, **content: Any
    ) -> dict[str, Any]:
        message_id = next(self._message_ids[chat["id"]])
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": user, **content}
        if text is not None:
            message["text"] = text
            if entities := _entities(text):
                message["entities"] = entities
        return message

    def voice(self, content: bytes, *, duration: int = 3, file_size: int | None = None) -> dict[str, Any]:
        """A Voice object for an uploaded voice note (`file_size` may claim another size than the bytes')."""
        file_id = self.add_file(content)
        size = len(content) if file_size is None else file_size
        return dict(file_id=file_id, file_unique_id=f"u-{file_id}", duration=duration, mime_type="audio/ogg",
                    file_size=size)  # fmt: skip

    def document(self, content: bytes, *, file_name: str, mime_type: str) -> dict[str, Any]:
        file_id = self.add_file(content, extension=file_name.rsplit(".", 1)[-1])
        return dict(file_id=file_id, file_unique_id=f"u-{file_id}", file_name=file_name, mime_type=mime_type,
                    file_size=len(content))  # fmt: skip

    def press(self, user: dict[str, Any], message: dict[str, Any], data: str) -> None:
        """Queue a callback query: `user` pressed the inline button with `data` under `message`."""
        query = {"id": f"cb-{len(self.calls)}", "from": user, "chat_instance": "1", "message": message, "data": data}
        self.push({"callback_query": query})

    @staticmethod
    def private_chat(user: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], "type": "private", "first_name": user["first_name"]}

    @staticmethod
    def group_chat(chat_id: int, title: str = "Friends") -> dict[str, Any]:
        return {"id": chat_id, "type": "supergroup", "title": title}

    # --- scripting: how the server misbehaves ---

    def fail(
        self, method: str, status: int = 500, *, times: int = 1, retry_after: int | None = None, description: str = ""
    ) -> None:
        """Answer the next `times` calls of `method` with an error (429 + retry_after: flood control)."""
        flood = f"Too Many Requests: retry after {retry_after}"
        description = description or (flood if status == 429 else HTTPStatus(status).phrase)
        for _ in range(times):
            self._failures[method].append(_Failure(status, description, retry_after))

    def slow(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Make the next `times` calls of `method` answer only after `seconds`."""
        for _ in range(times):
            self._failures[method].append(_Failure(0, "", delay=seconds))

    # --- inspection ---

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        """Calls of `method` (to `chat_id`) that were answered successfully."""
        return [
            call
            for call in self.calls
            if call.method == method and call.done and (chat_id is None or call.chat_id == chat_id)
        ]

    def received(self, method: str) -> list[Call]:
        """Every call of `method`, answered or not yet (a long poll in progress), failed or not."""
        return [call for call in self.calls if call.method == method]

    async def wait_for(
        self,
        method: str,
        *,
        chat_id: int | None = None,
        count: int = 1,
        where: Callable[[Call], bool] = lambda call: True,
        within: float = 30.0,
    ) -> list[Call]:
        """Wait until `count` successful calls of `method` matching `where` were made; returns them all."""

        def matching() -> list[Call]:
            return [call for call in self.sent(method, chat_id) if where(call)]

        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()

    async def wait_until(self, condition: Callable[[], bool], within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(condition)

    # --- the HTTP side ---

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = Call(method, params, files)
        failure = self._failures[method].popleft() if self._failures[method] else None
        if failure is not None and failure.delay:
            call.injected = "slow"
            self.calls.append(call)
            await asyncio.sleep(failure.delay)  # cancelled here if the client gives up first
            call.injected = None
        elif failure is not None:
            call.injected = f"{failure.status} {failure.description}"
            self.calls.append(call)
            self._notify()
            return _error(failure.status, failure.description, failure.retry_after)
        else:
            self.calls.append(call)
            self._notify()  # a long poll in progress counts as "the bot is polling"
        handler = getattr(self, f"_m_{method}", None)
        try:
            if handler is None:
                return _error(404, "Not Found")
            call.result = await handler(call)
            call.done = True
            return web.json_response({"ok": True, "result": call.result})
        except _ApiError as error:
            call.injected = f"{error.status} {error.description}"
            return _error(error.status, error.description)
        finally:
            self._notify()

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        for file_path, content in self.files.values():
            if file_path == request.match_info["path"]:
                return web.Response(body=content, content_type="application/octet-stream")
        return _error(404, "Not Found")

    # --- Bot API methods (each returns the `result`) ---

    async def _m_getMe(self, call: Call) -> dict[str, Any]:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False}

    async def _m_getUpdates(self, call: Call) -> list[dict[str, Any]]:
        offset = int(call.params.get("offset") or 0)
        limit = int(call.params.get("limit") or 100)
        timeout = min(float(call.params.get("timeout") or 0), MAX_LONG_POLL_S)
        self._updates = [update for update in self._updates if update["update_id"] >= offset]  # confirmed
        if not self._updates and timeout > 0:
            with_timeout = asyncio.timeout(timeout)
            try:
                async with with_timeout, self._changed:
                    await self._changed.wait_for(lambda: bool(self._updates))
            except TimeoutError:
                if not with_timeout.expired():
                    raise
        return self._updates[:limit]

    async def _m_deleteWebhook(self, call: Call) -> bool:
        self.webhook = None
        return True

    async def _m_setWebhook(self, call: Call) -> bool:
        self.webhook = dict(call.params)
        return True

    async def _m_setMyCommands(self, call: Call) -> bool:
        return True

    _m_sendChatAction = _m_answerCallbackQuery = _m_deleteMessage = _m_setMyCommands

    async def _m_getFile(self, call: Call) -> dict[str, Any]:
        file_id = call.params.get("file_id", "")
        if file_id not in self.files:
            raise _ApiError(400, "Bad Request: invalid file_id")
        file_path, content = self.files[file_id]
        size = self.file_sizes.get(file_id, len(content))
        if size > 20 * 1024 * 1024:
            raise _ApiError(400, "Bad Request: file is too big")
        return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": size, "file_path": file_path}

    async def _m_sendMessage(self, call: Call) -> dict[str, Any]:
        text = call.params.get("text", "")
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        return self._sent_message(call, text=text)

    async def _m_sendVoice(self, call: Call) -> dict[str, Any]:
        upload = call.files.get("voice")
        if upload is None:
            raise _ApiError(400, "Bad Request: there is no voice in the request")
        if len(call.params.get("caption", "")) > 1024:
            raise _ApiError(400, "Bad Request: message caption is too long")
        file_id = self.add_file(upload)
        duration = int(call.params.get("duration") or 0)
        voice = dict(file_id=file_id, file_unique_id=f"u-{file_id}", mime_type="audio/ogg", duration=duration,
                     file_size=len(upload))  # fmt: skip
        extra = {"caption": call.params["caption"]} if call.params.get("caption") else {}
        return self._sent_message(call, voice=voice, **extra)

    async def _m_sendAudio(self, call: Call) -> dict[str, Any]:
        if (upload := call.files.get("audio")) is None:
            raise _ApiError(400, "Bad Request: there is no audio in the request")
        audio = dict(file_id=self.add_file(upload), file_unique_id="u-audio", duration=int(call.params["duration"]))
        return self._sent_message(call, audio=audio, caption=call.params.get("caption"))

    async def _m_editMessageText(self, call: Call) -> dict[str, Any]:
        if not call.params.get("text", "").strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        return self._sent_message(call, text=call.params["text"], message_id=int(call.params["message_id"]))

    def _sent_message(self, call: Call, *, message_id: int | None = None, **content: Any) -> dict[str, Any]:
        chat_id = call.chat_id
        if chat_id is None:
            raise _ApiError(400, "Bad Request: chat_id is empty")
        chat = self._chats.get(chat_id)
        if chat is None:
            raise _ApiError(400, "Bad Request: chat not found")
        message_id = message_id or next(self._message_ids[chat_id])
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": self.bot_user, **content}
        if markup := call.json("reply_markup"):
            message["reply_markup"] = markup
        return message


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


async def _read_params(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """Parameters as the Bot API takes them: query string, then a urlencoded, multipart or JSON body."""
    params: dict[str, str] = dict(request.query)
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json()
        params.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in body.items()})
    elif request.can_read_body:
        for key, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                files[key] = value.file.read()
            else:
                params[key] = str(value)
    return params, files


def _entities(text: str) -> list[dict[str, Any]]:
    """Telegram marks a leading /command (with its @bot suffix) and every @mention, in UTF-16 code units."""

    def utf16(index: int) -> int:
        return len(text[:index].encode("utf-16-le")) // 2

    entities = []
    start = 0
    if text.startswith("/"):
        start = len(text.split()[0])
        entities.append({"type": "bot_command", "offset": 0, "length": utf16(start)})
    for mention in re.finditer(r"@\w{3,}", text[start:]):
        begin, end = mention.start() + start, mention.end() + start
        entities.append({"type": "mention", "offset": utf16(begin), "length": utf16(end) - utf16(begin)})
    return entities


def _chats_in(update: dict[str, Any]) -> list[dict[str, Any]]:
    message = update.get("message") or update.get("callback_query", {}).get("message") or {}
    return [message["chat"]] if "chat" in message else []
