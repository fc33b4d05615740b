"""Receiving updates by webhook: a small aiohttp server that keeps Telegram's POSTs in the shared inbox.

python-telegram-bot's own webhook server needs tornado (its `webhooks` extra); aiohttp is already here
(discord.py runs on it), and the job is small: check Telegram's secret header, parse the update, store it,
answer 200. What happens next (one chat's updates in order, whichever of several processes received them) is
`chat_lanes`. TLS is left to the reverse proxy or load balancer in front, as `ALAN_TELEGRAM_WEBHOOK_URL` is
public HTTPS.

Every process behind one URL must check the same secret: Telegram sends the one given to the last setWebhook.
Unless ALAN_TELEGRAM_WEBHOOK_SECRET sets it, it is derived from the bot token (an HMAC of it), so every process
with the token makes the same one, with nothing to configure and nothing to share; it changes with the token. It
reveals nothing of the token, and whoever has the token could set any webhook anyway.

setWebhook is called by the first process to start with these settings; the others find it done (a record in
the database, and Telegram's getWebhookInfo agreeing) and leave it. Processes that start at the same moment may
each call it: with the same URL, secret and update kinds, that is the same registration, made again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Bot, Update
from telegram.ext import Application

from alan.logs import RedactSecrets
from alan.settings import Settings
from bot.telegram.chat_lanes import ChatLanes, lane_options
from bot.telegram.common import PLATFORM
from bot.telegram.lane_services import LaneServices
from bot.telegram.send import RetryPolicy, with_retries
from engine.store.inbox import Inbox

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# What makes the derived secret this one's: another use of an HMAC of the token would use another label.
SECRET_LABEL = b"aLAN Telegram webhook secret, v1"
# How long a registration is taken as done: after that, a starting process registers again (harmless).
REGISTRATION_FRESH = timedelta(hours=24)
WRONG_SECRET = (
    "webhook: refused a request without the right secret from %s (every aLAN process behind this URL must have "
    "the same ALAN_TELEGRAM_WEBHOOK_SECRET, or all none)"
)


def redact_in_logs(secret: str) -> None:
    """Add a secret made at run time to those the app's log handler (see `configure_logging`) scrubs."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "alan":
            for redactor in handler.filters:
                if isinstance(redactor, RedactSecrets):
                    redactor.secrets = sorted({*redactor.secrets, secret}, key=len, reverse=True)


def derived_secret(token: str) -> str:
    """The webhook secret every process with this bot token makes: 43 characters of Telegram's allowed set."""
    digest = hmac.new(token.encode(), SECRET_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def webhook_secret(settings: Settings) -> str:
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret.get_secret_value()
    assert settings.telegram_token is not None
    secret = derived_secret(settings.telegram_token.get_secret_value())
    redact_in_logs(secret)
    log.info(
        "ALAN_TELEGRAM_WEBHOOK_SECRET is not set: the webhook's secret is derived from the bot token, the same in "
        "every aLAN process with this token (set it to choose your own, the same in every process)"
    )
    return secret


@dataclass
class Webhook:
    """The running webhook: its HTTP server and the chats it serves."""

    runner: web.AppRunner
    lanes: ChatLanes

    async def cleanup(self) -> None:
        """Stop receiving (Telegram's next POSTs go to the other processes, or wait), then stop serving."""
        await self.runner.cleanup()
        await self.lanes.stop()


async def start_webhook(
    application: Application,
    services: LaneServices,
    settings: Settings,
    allowed_updates: list[str],
    policy: RetryPolicy,
    listen: str = "0.0.0.0",
) -> Webhook:
    """Serve the webhook on `telegram_webhook_port`, follow up what was left unanswered, then serve the inbox and
    make sure Telegram posts here. Call after the application has started."""
    secret = webhook_secret(settings)
    url = settings.telegram_webhook_url
    path = urlsplit(url).path or "/"
    port = settings.telegram_webhook_port
    # The conversation's connections: a second pool per process would halve how many processes PostgreSQL serves.
    store = services.conversation.store
    inbox = Inbox(store.sessions, retry_delays=store.retry_delays)
    # Host and port first: a process listening there now proves the one before it there is gone.
    here = f"{socket.gethostname()}:{port}:"
    owner = f"{here}{os.getpid()}:{secrets.token_hex(3)}"
    lanes = ChatLanes(application, services, inbox, owner, lane_options(settings, services.options.stop_grace_s))

    async def receive(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            log.warning(WRONG_SECRET, request.remote)
            return web.Response(status=403)
        try:
            payload = await request.text()
            update = Update.de_json(json.loads(payload), application.bot)
            if update is None:
                raise ValueError("empty update")
        except Exception as error:  # a malformed post is refused, never a crash
            log.warning("webhook: unreadable update: %s", error)
            return web.Response(status=400)
        try:
            await lanes.receive(update, payload)
        except Exception as error:
            # Not stored: Telegram keeps it and sends it again later, so nothing is lost.
            log.error("webhook: update %d could not be stored (%s): Telegram will deliver it again",
                      update.update_id, error)  # fmt: skip
            return web.Response(status=503)
        return web.Response()

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(path, receive)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    webhook = Webhook(runner, lanes)
    try:
        await web.TCPSite(runner, listen, port).start()
        log.info("Telegram webhook listening on port %d at %s; in the inbox as %s", port, path, owner)
        await lanes.release_predecessors(here)
        await lanes.recover()  # before `open`: a follow-up goes ahead of anything new from its chat
        lanes.open()
        await register(application.bot, inbox, owner, url, secret, allowed_updates, policy)
    except BaseException:
        await webhook.cleanup()
        raise
    return webhook


def _fingerprint(url: str, secret: str, allowed_updates: list[str]) -> str:
    """Names these settings in the database without the secret (a hash of them all)."""
    material = "\0".join([url, secret, *sorted(allowed_updates)]).encode()
    return hashlib.sha256(material).hexdigest()[:16]


async def register(
    bot: Bot, inbox: Inbox, owner: str, url: str, secret: str, allowed_updates: list[str], policy: RetryPolicy
) -> None:
    """setWebhook, unless another process already registered these settings and Telegram agrees."""
    key = f"#webhook:{_fingerprint(url, secret, allowed_updates)}"
    now = datetime.now(UTC)
    holder = await asyncio.to_thread(inbox.noted, PLATFORM, key, now)
    if holder is not None and await _telegram_agrees(bot, url, allowed_updates):
        log.info("Telegram webhook: already set with these settings (%s); not setting it again", holder)
        return
    await with_retries(
        lambda: bot.set_webhook(url, secret_token=secret, allowed_updates=allowed_updates), policy, "setWebhook"
    )
    await asyncio.to_thread(inbox.note, PLATFORM, key, f"registered by {owner}", now + REGISTRATION_FRESH)


async def _telegram_agrees(bot: Bot, url: str, allowed_updates: list[str]) -> bool:
    """Whether Telegram posts to `url` the updates asked for (it can't say which secret it sends)."""
    try:
        info = await bot.get_webhook_info()
    except Exception as error:
        log.info("could not ask Telegram how its webhook is set (%s): setting it", error)
        return False
    if info.last_error_message:
        # A 403 here means a process behind the URL refused Telegram's secret: their settings differ.
        log.warning("Telegram reports its last delivery to the webhook failed: %s", info.last_error_message)
    return info.url == url and sorted(info.allowed_updates or ()) == sorted(allowed_updates)
