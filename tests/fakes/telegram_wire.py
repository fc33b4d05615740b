"""The Bot API's wire format as the fake server speaks it: recorded calls, error answers, request parameters,
and the entities Telegram adds to a message's text. (Split from `telegram_server.py`, which scripts the server.)
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


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
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    delay: float = 0.0  # a slow answer: wait this long, then answer normally (status 0) or fail
    # Carry the call out at once, and only then wait `delay` before answering: a request that Telegram
    # completed although the client gave up waiting for its answer.
    done_first: bool = False


class ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def error_response(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


async def read_params(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
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


def entities_of(text: str) -> list[dict[str, Any]]:
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


def chats_in(update: dict[str, Any]) -> list[dict[str, Any]]:
    message = update.get("message") or update.get("callback_query", {}).get("message") or {}
    return [message["chat"]] if "chat" in message else []
