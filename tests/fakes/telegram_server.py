"""A local fake of Telegram's Bot API server, speaking its real HTTP protocol, for testing the real
python-telegram-bot client.

What it speaks (as in core.telegram.org/bots/api, "Making requests"): `POST /bot<token>/<method>` with
urlencoded, multipart or JSON parameters (python-telegram-bot sends urlencoded fields, JSON-encoding
non-string values, and multipart when it uploads a file), answered with `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": ..., "description": ..., "parameters": {"retry_after": ...}}`; files are
downloaded from `GET /file/bot<token>/<file_path>`. `getUpdates` long-polls a queue the test feeds, honouring
`offset` (earlier updates are confirmed and dropped) and `timeout`.

Every request is recorded (`calls`); a test can make the next N calls of a method fail with a 429, a 5xx or
a Bot API error, answer slowly (before or after carrying the call out), make file downloads fail, and can
wait for a request to arrive. File downloads are recorded as calls of the pseudo-method "download".

Usage::

    async with FakeTelegram() as server:
        chat = server.private_chat(ANN)
        server.push_message(chat, ANN, text="hello")
        [call] = await server.wait_for("sendVoice")
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer
from tests.fakes.telegram_wire import ApiError, Call, Failure, chats_in, entities_of, error_response, read_params

__all__ = ["BOT_ID", "BOT_USERNAME", "TOKEN", "Call", "FakeTelegram"]

TOKEN = "123456:TEST-token-for-the-fake-bot-api"
BOT_ID = 123456
BOT_USERNAME = "alan_test_bot"
MAX_LONG_POLL_S = 50.0


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
        self._query_ids = itertools.count(1)
        self._answered: set[str] = set()  # callback queries answered: Telegram takes one answer each
        self._message_ids: dict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1000))
        self._chats: dict[int, dict[str, Any]] = {}
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
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

    def add_chat(self, chat: dict[str, Any]) -> None:
        """Make a chat known, as Telegram knows every chat a bot was in (a chat seen before a restart, say)."""
        self._chats[chat["id"]] = chat

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns its update_id."""
        update = {"update_id": next(self._update_ids), **update}
        for chat in chats_in(update):
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
            if entities := entities_of(text):
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
        self.push({"callback_query": self.callback_query(user, message, data)})

    def callback_query(self, user: dict[str, Any], message: dict[str, Any], data: str) -> dict[str, Any]:
        """The CallbackQuery Telegram sends when `user` presses the inline button with `data` under `message`."""
        query_id = f"cb-{next(self._query_ids)}"
        return {"id": query_id, "from": user, "chat_instance": "1", "message": message, "data": data}

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
            self._failures[method].append(Failure(status, description, retry_after))

    def slow(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Make the next `times` calls of `method` answer only after `seconds`."""
        for _ in range(times):
            self._failures[method].append(Failure(0, "", delay=seconds))

    def answer_late(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Carry out the next `times` calls of `method` at once (a message is sent) but answer after `seconds`."""
        for _ in range(times):
            self._failures[method].append(Failure(0, "", delay=seconds, done_first=True))

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
            return error_response(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await read_params(request)
        call = Call(method, params, files)
        failure = self._failures[method].popleft() if self._failures[method] else None
        if failure is not None and failure.done_first:
            self.calls.append(call)
            response = await self._carry_out(call)
            await asyncio.sleep(failure.delay)  # cancelled here if the client gives up first: the call stands
            return response
        if failure is not None and failure.delay:
            call.injected = "slow"
            self.calls.append(call)
            await asyncio.sleep(failure.delay)  # cancelled here if the client gives up first
            call.injected = None
        elif failure is not None:
            call.injected = f"{failure.status} {failure.description}"
            self.calls.append(call)
            self._notify()
            return error_response(failure.status, failure.description, failure.retry_after)
        else:
            self.calls.append(call)
            self._notify()  # a long poll in progress counts as "the bot is polling"
        return await self._carry_out(call)

    async def _carry_out(self, call: Call) -> web.Response:
        handler = getattr(self, f"_m_{call.method}", None)
        try:
            if handler is None:
                return error_response(404, "Not Found")
            call.result = await handler(call)
            call.done = True
            return web.json_response({"ok": True, "result": call.result})
        except ApiError as error:
            call.injected = f"{error.status} {error.description}"
            return error_response(error.status, error.description)
        finally:
            self._notify()

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return error_response(401, "Unauthorized")
        call = Call("download", {"file_path": request.match_info["path"]})
        self.calls.append(call)
        self._notify()
        if self._failures["download"]:
            failure = self._failures["download"].popleft()
            call.injected = f"{failure.status} {failure.description}"
            return error_response(failure.status, failure.description)
        for file_path, content in self.files.values():
            if file_path == request.match_info["path"]:
                call.done = True
                return web.Response(body=content, content_type="application/octet-stream")
        return error_response(404, "Not Found")

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

    _m_sendChatAction = _m_deleteMessage = _m_setMyCommands

    async def _m_answerCallbackQuery(self, call: Call) -> bool:
        query_id = str(call.params.get("callback_query_id", ""))
        if query_id in self._answered:  # as Telegram: once, and not long after the press
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self._answered.add(query_id)
        return True

    async def _m_getFile(self, call: Call) -> dict[str, Any]:
        file_id = call.params.get("file_id", "")
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        file_path, content = self.files[file_id]
        size = self.file_sizes.get(file_id, len(content))
        if size > 20 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": size, "file_path": file_path}

    async def _m_sendMessage(self, call: Call) -> dict[str, Any]:
        text = call.params.get("text", "")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return self._sent_message(call, text=text)

    async def _m_sendVoice(self, call: Call) -> dict[str, Any]:
        upload = call.files.get("voice")
        if upload is None:
            raise ApiError(400, "Bad Request: there is no voice in the request")
        if len(call.params.get("caption", "")) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        file_id = self.add_file(upload)
        duration = int(call.params.get("duration") or 0)
        voice = dict(file_id=file_id, file_unique_id=f"u-{file_id}", mime_type="audio/ogg", duration=duration,
                     file_size=len(upload))  # fmt: skip
        extra = {"caption": call.params["caption"]} if call.params.get("caption") else {}
        return self._sent_message(call, voice=voice, **extra)

    async def _m_sendAudio(self, call: Call) -> dict[str, Any]:
        if (upload := call.files.get("audio")) is None:
            raise ApiError(400, "Bad Request: there is no audio in the request")
        audio = dict(file_id=self.add_file(upload), file_unique_id="u-audio", duration=int(call.params["duration"]))
        return self._sent_message(call, audio=audio, caption=call.params.get("caption"))

    async def _m_editMessageText(self, call: Call) -> dict[str, Any]:
        if not call.params.get("text", "").strip():
            raise ApiError(400, "Bad Request: message text is empty")
        return self._sent_message(call, text=call.params["text"], message_id=int(call.params["message_id"]))

    def _sent_message(self, call: Call, *, message_id: int | None = None, **content: Any) -> dict[str, Any]:
        chat_id = call.chat_id
        if chat_id is None:
            raise ApiError(400, "Bad Request: chat_id is empty")
        chat = self._chats.get(chat_id)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        message_id = message_id or next(self._message_ids[chat_id])
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": self.bot_user, **content}
        if markup := call.json("reply_markup"):
            message["reply_markup"] = markup
        return message
