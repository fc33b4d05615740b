"""Logging for the whole app, with secrets scrubbed from every line.

Tokens can reach log lines without us writing them: httpx logs each request URL at INFO, and Telegram's Bot
API puts the token in the URL (`/bot<token>/getUpdates`). A filter on the handler replaces every configured
secret before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

REDACTED = "[REDACTED]"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message or record.exc_info:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    handler.set_name("alan")
    root = logging.getLogger()
    # Replace only our own handler, so that calling this twice (or under a test runner) keeps other handlers.
    root.handlers[:] = [existing for existing in root.handlers if existing.get_name() != "alan"] + [handler]
    root.setLevel(level)
    # One line per HTTP request to the Bot API every polling cycle drowns the log; warnings still show.
    # (The openai client's fork of httpx, `httpx2`, logs the same line under its own name.)
    for http_client in ("httpx", "httpx2"):
        logging.getLogger(http_client).setLevel(max(logging.WARNING, root.level))
    # Alembic narrates every start-up check at INFO; only its problems are worth a line.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # At DEBUG these libraries log every Bot API call and gateway event in full, people's messages and our replies
    # included (openai 1.x logs each request's options, the messages with them); logs may end up on disk, and
    # nothing a person said may stay there after /forget.
    for chatty in ("telegram", "discord", "openai"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))
