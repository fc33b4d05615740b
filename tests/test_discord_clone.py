"""`/clone` through its real callbacks with interaction doubles, on the real engine (tiny models, fake Ollama):
a confirmed clone really stores a voice with consent, a cancelled one stores nothing."""

from __future__ import annotations

from bot.discord.commands import AlanCommands
from bot.discord.views import CloneView, TranscriptModal
from engine.store.repository import EVERYWHERE, Store
from engine.voices import CONSENT_STATEMENT
from tests.conftest import DISCORD_CLIP_TEXT as CLIP_TEXT
from tests.discord_doubles import FakeAttachment, FakeGuild, FakeInteraction, FakeMember, preview, run

# -- /clone ------------------------------------------------------------------------------------------------------


async def test_clone_refuses_what_is_not_audio_without_downloading_it(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember
) -> None:
    picture = FakeAttachment(b"\x89PNG....", "cat.png", "image/png")
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.clone, cog, interaction, audio=picture)
    assert interaction.log[0].kind == "defer" and interaction.log[0].ephemeral
    assert interaction.last.ephemeral and "“cat.png” isn't an audio file" in interaction.last.content
    assert picture.reads == 0


async def test_clone_refuses_a_file_over_the_limit_before_downloading_it(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember
) -> None:
    huge = FakeAttachment(b"", "speech.ogg", "audio/ogg", size=30 * 1024 * 1024)
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.clone, cog, interaction, audio=huge)
    assert "too large (30.0 MB)" in interaction.last.content and "limit is 20 MB" in interaction.last.content
    assert huge.reads == 0


async def test_clone_passes_on_what_the_engine_says_about_a_bad_clip(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember
) -> None:
    broken = FakeAttachment(b"OggS not really" * 20, "note.ogg", "audio/ogg")
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.clone, cog, interaction, audio=broken)
    assert broken.reads == 1 and interaction.last.ephemeral
    assert interaction.last.view is None and "cut off or damaged" in interaction.last.content


async def test_clone_preview_then_confirm_stores_the_voice_with_consent(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember, clip: bytes, store: Store
) -> None:
    view = await preview(cog, FakeInteraction(ann, guild), clip)
    assert view.transcript and view.transcript in view.preview()  # Whisper's transcript, shown for checking
    assert view.name == "ann voice"

    someone_else = FakeInteraction(guild.add(FakeMember("mallory")), guild)
    assert not await view.interaction_check(someone_else)  # ephemeral anyway, but never someone else's button
    assert "someone else" in someone_else.last.content

    press = FakeInteraction(ann, guild)
    await view.confirm.callback(press)
    assert press.log[0].kind == "edit_message" and press.log[0].view is None
    assert press.last.kind == "edit_original_response" and "Saved “ann voice”" in press.last.content
    user = store.find_user("discord", str(ann.id))
    assert user is not None
    [voice] = store.voices_of(user.id)
    assert voice.name == "ann voice" and voice.transcript == view.transcript
    assert voice.consent_statement == CONSENT_STATEMENT and voice.consent_at is not None
    assert store.active_voice(user.id, EVERYWHERE).id == voice.id

    # The same name again: a clear message, not a crash.
    view = await preview(cog, FakeInteraction(ann, guild), clip, name="ann voice")
    press = FakeInteraction(ann, guild)
    await view.confirm.callback(press)
    assert "already have a voice called" in press.last.content and len(store.voices_of(user.id)) == 1


async def test_clone_edit_corrects_the_transcript_through_the_modal(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember, clip: bytes, store: Store
) -> None:
    view = await preview(cog, FakeInteraction(ann, guild), clip, transcript="This is my  voice.", name="Mine")
    assert view.transcript == "This is my voice."  # the caller's own transcript is proposed over Whisper's
    assert view.draft.transcript == "This is my voice." and view.draft.language is None  # Whisper was skipped
    assert modal_max_length(view) == 1000

    press = FakeInteraction(ann, guild)
    await view.edit.callback(press)
    modal = press.last.modal
    assert press.last.kind == "send_modal" and isinstance(modal, TranscriptModal)
    assert modal.text.default == "This is my voice."
    # What Discord sends back when the user submits the modal, handled by discord.py's own code.
    submit = FakeInteraction(ann, guild)
    payload = {"type": 18, "component": {"type": 4, "custom_id": modal.text.custom_id, "value": f"  {CLIP_TEXT} "}}
    modal._refresh(submit, [payload], {})  # type: ignore[arg-type]
    await modal.on_submit(submit)
    assert submit.last.kind == "edit_message" and submit.last.view is view
    assert view.transcript == CLIP_TEXT and CLIP_TEXT in submit.last.content

    press = FakeInteraction(ann, guild)
    await view.confirm.callback(press)
    user = store.find_user("discord", str(ann.id))
    assert user is not None
    [voice] = store.voices_of(user.id)
    assert voice.name == "Mine" and voice.transcript == CLIP_TEXT


def modal_max_length(view: CloneView) -> int | None:
    return TranscriptModal(view).text.max_length


async def test_clone_refuses_an_overlong_transcript_and_its_preview_fits_one_message(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember, clip: bytes
) -> None:
    attachment = FakeAttachment(clip, "ann_voice.ogg", "audio/ogg")
    interaction = FakeInteraction(ann, guild)
    await run(AlanCommands.clone, cog, interaction, audio=attachment, transcript="word " * 300)
    assert "over 1000 characters" in interaction.last.content and interaction.last.view is None
    assert attachment.reads == 0

    longest = ("x" * 9 + " ") * 100
    view = await preview(cog, FakeInteraction(ann, guild), clip, transcript=longest, name="n" * 1000)
    assert len(view.preview()) <= 2000


async def test_clone_cancel_stores_nothing(
    cog: AlanCommands, guild: FakeGuild, ann: FakeMember, clip: bytes, store: Store
) -> None:
    view = await preview(cog, FakeInteraction(ann, guild), clip)
    press = FakeInteraction(ann, guild)
    await view.cancel.callback(press)
    assert press.last.kind == "edit_message" and "nothing was stored" in press.last.content
    assert press.last.view is None and view.is_finished()
    user = store.find_user("discord", str(ann.id))
    assert user is None or store.voices_of(user.id) == []
