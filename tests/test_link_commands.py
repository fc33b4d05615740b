"""Linking a Telegram account and a Discord account through the commands people use: a code asked for on one
platform, sent on the other, confirmed with a button; then memory is shared (and not before). Telegram through the
local Bot API server, Discord through its interaction doubles, the same real engine behind both."""

from __future__ import annotations

import json
import re

from bot.discord.link_commands import LinkCommands, LinkView
from engine.conversation import Conversation, Participant
from engine.store.links import BAD_CODE
from tests.discord_doubles import FakeGuild, FakeInteraction, FakeMember, run
from tests.fakes.ollama_server import FakeOllama
from tests.test_telegram import ANN, Start, start_bot  # noqa: F401 (start_bot is a fixture)

TELEGRAM_ANN = Participant("telegram", str(ANN["id"]), str(ANN["id"]), "Ann")


def code_in(text: str) -> str:
    found = re.search(r"Your code: ([A-Z0-9]{5}-[A-Z0-9]{5})", text)
    assert found is not None, text
    return found.group(1)


async def test_a_code_from_telegram_confirmed_on_discord_shares_memory(
    start_bot: Start, conversation: Conversation, ollama: FakeOllama  # noqa: F811
) -> None:
    telegram = await start_bot()
    guild = FakeGuild()
    annie = guild.add(FakeMember("annie"))
    on_discord = Participant("discord", str(annie.id), "9", "Annie")
    ollama.script_json(json.dumps({"changes": [{"action": "add", "number": 0, "fact": "They are a nurse."}]}))
    [_ async for _ in conversation.turn(TELEGRAM_ANN, text="I'm a nurse.", speak=False)]
    await conversation.memory_settled()
    assert (await conversation.memory(on_discord)).facts == []  # not linked: a stranger

    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text="/link")
    [reply] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    code = code_in(reply.text)
    assert "on Discord within 10 minutes" in reply.text

    cog = LinkCommands(conversation)
    wrong = FakeInteraction(annie, guild)
    await run(LinkCommands.link, cog, wrong, code="ZZZZZ-ZZZZZ")
    assert wrong.last.content == BAD_CODE and wrong.last.ephemeral
    offer = FakeInteraction(annie, guild)
    await run(LinkCommands.link, cog, offer, code=code)
    assert "This code is from Ann on Telegram" in offer.last.content and offer.last.ephemeral
    view = offer.last.view
    assert isinstance(view, LinkView) and not view.linked
    assert (await conversation.memory(on_discord)).facts == []  # nothing linked before the button
    press = FakeInteraction(annie, guild)
    await view.confirm.callback(press)
    assert view.linked and "are linked" in press.texts()[-1]
    assert [fact.text for fact in (await conversation.memory(on_discord)).facts] == ["They are a nurse."]

    # Telegram shows the link, and /unlink says what each keeps.
    telegram.push_message(chat, ANN, text="/unlink")
    [_, unlinked] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2)
    assert "no longer linked with Annie on Discord" in unlinked.text and "copy of what I remembered" in unlinked.text


async def test_a_code_from_discord_confirmed_with_a_telegram_button(
    start_bot: Start, conversation: Conversation  # noqa: F811
) -> None:
    telegram = await start_bot()
    guild = FakeGuild()
    annie = guild.add(FakeMember("annie"))
    asked = FakeInteraction(annie, guild)
    await run(LinkCommands.link, LinkCommands(conversation), asked)
    code = code_in(asked.last.content)
    assert asked.last.ephemeral and "on Telegram within 10 minutes" in asked.last.content

    # In a group, a code is never asked for or shown.
    group = telegram.group_chat(-100900)
    telegram.push_message(group, ANN, text="/link")
    [refused] = await telegram.wait_for("sendMessage", chat_id=group["id"])
    assert "private chat" in refused.text and "Your code" not in refused.text

    # Sent in a group, a code is void at once: everyone there read it.
    telegram.push_message(group, ANN, text=f"/link {code}")
    [_, voided] = await telegram.wait_for("sendMessage", chat_id=group["id"], count=2)
    assert "no longer works" in voided.text
    telegram.push_message(group, ANN, text="/unlink")  # names linked accounts: never in a group
    [*_, private_only] = await telegram.wait_for("sendMessage", chat_id=group["id"], count=3)
    assert "private chat" in private_only.text
    chat = telegram.private_chat(ANN)
    telegram.push_message(chat, ANN, text=f"/link {code}")
    [refused] = await telegram.wait_for("sendMessage", chat_id=ANN["id"])
    assert refused.text == BAD_CODE
    asked = FakeInteraction(annie, guild)
    await run(LinkCommands.link, LinkCommands(conversation), asked)
    code = code_in(asked.last.content)

    telegram.push_message(chat, ANN, text=f"/link {code.lower()}")
    [_, offer] = await telegram.wait_for("sendMessage", chat_id=ANN["id"], count=2)
    assert "This code is from Annie on Discord" in offer.text
    assert [label for label, _ in offer.buttons] == ["Link", "Cancel"]
    telegram.press(ANN, offer.result, dict(offer.buttons)["Link"])
    [done] = await telegram.wait_for("editMessageText", chat_id=ANN["id"])
    assert "are linked" in done.text
    discord_annie = Participant("discord", str(annie.id), "9", "Annie")
    assert [str(account) for account in await conversation.linked_accounts(discord_annie)] == ["Ann on Telegram"]
