"""The chat platforms aLAN runs on, one entry each.

A platform is a package in `bot/` with a module whose `serve(settings, conversation, scheduler)` runs it until
cancelled (every platform shares the one conversation engine and the one turn scheduler `alan run` builds), plus
its token setting in `alan.settings.Settings`. Settings (`configured_platforms`), `alan doctor` and `alan run` read
everything else from `PLATFORMS`, so a new platform is one more entry here.

Nothing here imports a platform's package (or its chat library): `alan --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import SecretStr

    from alan.settings import Settings


@dataclass(frozen=True)
class Platform:
    name: str  # in logs, `alan doctor` and Settings.configured_platforms: "telegram"
    label: str  # for people: "Telegram"
    token_variable: str  # the environment variable of its token: "TELEGRAM_TOKEN"
    token_setting: str  # the `Settings` field that holds the token (a SecretStr, None when unset)
    token_source: str  # where the operator gets a token: "from @BotFather"
    module: str  # the module whose `async def serve(settings, conversation, scheduler) -> None` runs it

    def token(self, settings: Settings) -> SecretStr | None:
        token: SecretStr | None = getattr(settings, self.token_setting)
        return token

    def is_configured(self, settings: Settings) -> bool:
        return self.token(settings) is not None


PLATFORMS: tuple[Platform, ...] = (
    Platform(
        name="telegram",
        label="Telegram",
        token_variable="TELEGRAM_TOKEN",
        token_setting="telegram_token",
        token_source="from @BotFather",
        module="bot.telegram.app",
    ),
    Platform(
        name="discord",
        label="Discord",
        token_variable="DISCORD_TOKEN",
        token_setting="discord_token",
        token_source="from the Discord developer portal",
        module="bot.discord.app",
    ),
)

BY_NAME = {platform.name: platform for platform in PLATFORMS}


def token_instructions() -> str:
    """What to set to configure a platform: "TELEGRAM_TOKEN (from @BotFather) and/or DISCORD_TOKEN (...)"."""
    return " and/or ".join(f"{platform.token_variable} ({platform.token_source})" for platform in PLATFORMS)
