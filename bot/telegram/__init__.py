"""aLAN on Telegram: `serve(settings, conversation, scheduler)` runs the bot until cancelled.

Modules: `app` (the application, its handlers, and `serve`), `send` (retries, texts, chat action), `media`
(audio in, size and length caps), `turn` (a turn as voice notes), `clone` (/clone), `commands` (the other
commands), `webhook` (the webhook server), `recovery` (on start, the turns a stopped process left unanswered),
`common` (what the handlers share).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.telegram.app import serve

__all__ = ["serve"]


def __getattr__(name: str) -> Any:
    # `serve` is imported on first use, so that a part of this package (say `bot.telegram.media`) can be imported
    # without the whole adapter and the engine behind it.
    if name == "serve":
        from bot.telegram.app import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
