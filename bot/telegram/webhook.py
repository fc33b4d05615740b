"""Receiving updates by webhook: a small aiohttp server that hands Telegram's POSTs to the application.

python-telegram-bot's own webhook server needs tornado (its `webhooks` extra); aiohttp is already here
(discord.py runs on it), and the job is small: check Telegram's secret header, parse the update, queue it,
answer 200 at once. TLS is left to the reverse proxy in front, as `ALAN_TELEGRAM_WEBHOOK_URL` is public HTTPS.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from alan.logs import RedactSecrets
from alan.settings import Settings
from bot.telegram.send import RetryPolicy, with_retries

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def redact_in_logs(secret: str) -> None:
    """Add a secret made at run time to those the app's log handler (see `configure_logging`) scrubs."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "alan":
            for redactor in handler.filters:
                if isinstance(redactor, RedactSecrets):
                    redactor.secrets = sorted({*redactor.secrets, secret}, key=len, reverse=True)


async def start_webhook(
    application: Application,
    settings: Settings,
    allowed_updates: list[str],
    policy: RetryPolicy,
    listen: str = "0.0.0.0",
) -> web.AppRunner:
    """Serve the webhook on `telegram_webhook_port` and tell Telegram to post there. Returns the runner."""
    # Without a configured secret, a random one per start still keeps strangers from posting fake updates.
    if settings.telegram_webhook_secret:
        secret = settings.telegram_webhook_secret.get_secret_value()
    else:
        secret = secrets.token_urlsafe(32)
        redact_in_logs(secret)
    path = urlsplit(settings.telegram_webhook_url).path or "/"

    async def receive(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            log.warning("webhook: refused a request without the right secret from %s", request.remote)
            return web.Response(status=403)
        try:
            update = Update.de_json(await request.json(), application.bot)
        except Exception as error:  # a malformed post is refused, never a crash
            log.warning("webhook: unreadable update: %s", error)
            return web.Response(status=400)
        await application.update_queue.put(update)
        return web.Response()

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(path, receive)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen, settings.telegram_webhook_port).start()
        await with_retries(
            lambda: application.bot.set_webhook(
                settings.telegram_webhook_url, secret_token=secret, allowed_updates=allowed_updates
            ),
            policy,
            "setWebhook",
        )
    except BaseException:
        await runner.cleanup()
        raise
    log.info("Telegram webhook listening on port %d at %s", settings.telegram_webhook_port, path)
    return runner
