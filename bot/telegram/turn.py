"""One conversation turn as Telegram messages: the reply as voice notes, cut at sentence ends.

The engine cuts the reply into notes (`NotePolicy`: the first as soon as its sentence is spoken, later ones
gathering at least `follow_up_min_seconds` of audio, so that a long answer is a few notes, not one per sentence)
and encodes each once; those very bytes are sent here and kept in the stored turn. Sending happens in the
background, in order, so uploading never holds up the voice model. If speech fails, the engine says so
(`SpeechUnavailable`) and the unspoken rest of the answer goes as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from bot.telegram.send import Replier
from engine.conversation import Conversation, NotePolicy, Participant
from engine.errors import TurnError
from engine.events import Heard, ReplySentence, SpeechUnavailable, TurnEvent, VoiceNote

log = logging.getLogger(__name__)

# Telegram shows an OGG/Opus file as a voice bubble only up to 1 MB; bigger ones arrive as plain files.
VOICE_BUBBLE_BYTES = 1_000_000
# At the encoder's 32 kb/s this is about 720 KB: a note never gets near the bubble limit.
MAX_NOTE_SECONDS = 180.0


class Outbox:
    """Sends the pieces of an answer one after another in a background task, in the order they were put."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._send_all(), name="telegram-outbox")

    def put(self, send: Callable[[], Awaitable[None]]) -> None:
        self._queue.put_nowait(send)

    def check(self) -> None:
        """Raise the send error early, so a turn whose answer can't be delivered stops making it."""
        if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]

    async def close(self) -> None:
        """Wait until everything put has been sent; raises the first failure."""
        self._queue.put_nowait(None)
        await self._task

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def _send_all(self) -> None:
        while (send := await self._queue.get()) is not None:
            await send()


async def send_note(replier: Replier, note: VoiceNote, with_text: bool) -> None:
    """Send one voice note, captioned with its text if wanted."""
    if len(note.data) > VOICE_BUBBLE_BYTES:
        log.warning("a %d byte voice note will arrive as a file", len(note.data))
    await replier.voice(note.data, note.seconds, note.text if with_text else None, note.text)


async def answer_turn(
    conversation: Conversation,
    who: Participant,
    replier: Replier,
    *,
    with_text: bool,
    follow_up_min_seconds: float,
    audio: bytes | None = None,
    text: str | None = None,
) -> None:
    """Run a turn and send its answer. Raises `TurnError` (for the user) after sending what was made."""
    notes = note_policy(follow_up_min_seconds)
    await send_answer(conversation.turn(who, audio=audio, text=text, notes=notes), replier, with_text=with_text)


def note_policy(follow_up_min_seconds: float) -> NotePolicy:
    """How Telegram wants a reply cut: the first note at once, then notes of a bubble's size at most."""
    return NotePolicy(min_seconds=follow_up_min_seconds, max_seconds=MAX_NOTE_SECONDS)


async def send_answer(turn: AsyncIterator[TurnEvent], replier: Replier, *, with_text: bool) -> None:
    """Send a turn's events as they come (a new turn's, or a resumed one's). Raises `TurnError` likewise.

    The turn must have been asked for voice notes (`note_policy`): a sentence that comes in no note is sent as text.
    """
    outbox = Outbox()
    texts: dict[int, str] = {}
    spoken: set[int] = set()

    def say(message: str) -> None:
        outbox.put(lambda: _send_text(replier, message))

    failure: TurnError | None = None
    try:
        try:
            async with contextlib.aclosing(turn):
                async for event in turn:
                    outbox.check()
                    if isinstance(event, Heard) and with_text:
                        say(f"I heard: “{event.text}”")
                    elif isinstance(event, ReplySentence):
                        texts[event.index] = event.text
                    elif isinstance(event, VoiceNote):
                        spoken.update(event.sentence_indices)
                        outbox.put(lambda note=event: send_note(replier, note, with_text))
                    elif isinstance(event, SpeechUnavailable):
                        say(event.message)
        except TurnError as error:
            failure = error  # send what was made first, then let the guard tell the user
        unspoken = " ".join(texts[index] for index in sorted(texts) if index not in spoken)
        if unspoken:
            say(unspoken)
    except BaseException:
        await outbox.cancel()
        raise
    await outbox.close()
    if failure is not None:
        raise failure


async def _send_text(replier: Replier, text: str) -> None:
    await replier.text(text)
