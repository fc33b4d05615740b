"""The fake Bot API server with `getWebhookInfo`, which a process behind a load balancer asks before setWebhook.

As Telegram answers it (core.telegram.org/bots/api#getwebhookinfo): the URL set (empty when none), whether a
custom certificate was given, how many updates wait, and the update kinds asked for when setWebhook named them.
The secret is never shown: Telegram doesn't say which one it sends.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.telegram_server import Call, FakeTelegram


class FakeTelegramWithWebhookInfo(FakeTelegram):
    async def _m_getWebhookInfo(self, call: Call) -> dict[str, Any]:
        hook = self.webhook or {}
        info: dict[str, Any] = {"url": hook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0}
        if hook.get("allowed_updates"):
            info["allowed_updates"] = json.loads(hook["allowed_updates"])
        return info
