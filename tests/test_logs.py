from __future__ import annotations

import logging

import pytest

from alan.logs import REDACTED, RedactSecrets

TOKEN = "123456:AAE-secret-token"


@pytest.fixture
def captured() -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactSecrets([TOKEN]))
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger, lines


def test_token_in_a_request_url_is_redacted(captured: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = captured
    logger.warning("HTTP Request: POST %s", f"https://api.telegram.org/bot{TOKEN}/getUpdates")
    assert lines == [f"HTTP Request: POST https://api.telegram.org/bot{REDACTED}/getUpdates"]


def test_token_in_a_traceback_is_redacted(captured: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = captured
    try:
        raise RuntimeError(f"failed to reach /bot{TOKEN}/sendVoice")
    except RuntimeError:
        logger.exception("send failed")
    assert TOKEN not in lines[0]
    assert REDACTED in lines[0] and "send failed" in lines[0]


def test_debug_logging_keeps_the_platform_libraries_from_logging_what_people_said() -> None:
    from alan.logs import configure_logging

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_logging("DEBUG", [TOKEN])
        # python-telegram-bot logs each Bot API call with its messages at DEBUG, discord.py each gateway event.
        for chatty in ("telegram", "telegram.ext", "discord", "discord.gateway"):
            assert not logging.getLogger(chatty).isEnabledFor(logging.DEBUG), chatty
        assert logging.getLogger("engine.conversation").isEnabledFor(logging.DEBUG)  # ours stay at DEBUG
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name in ("telegram", "discord", "httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.NOTSET)
