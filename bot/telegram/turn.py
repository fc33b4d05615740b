"""One conversation turn as Telegram messages: the reply as voice notes, cut at sentence ends.

The first voice note goes out as soon as its sentence is spoken, while the engine makes the rest; later
notes gather at least `follow_up_min_seconds` of audio so that a long answer is a few notes, not one per
sentence. Sending happens in the background, in order, so uploading never holds up the voice model. If
speech fails, the engine says so (`SpeechUnavailable`) and the unspoken rest of the answer goes as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bot.telegram.send import Replier
from engine.audio import CSM_RATE, encode_ogg_opus
from engine.conversation import Conversation, Participant
from engine.errors import TurnError
from engine.events import Heard, ReplySentence, SentenceSpoken, SpeechChunk, SpeechUnavailable, TurnEvent

log = logging.getLogger(__name__)

# Telegram shows an OGG/Opus file as a voice bubble only up to 1 MB; bigger ones arrive as plain files.
VOICE_BUBBLE_BYTES = 1_000_000
# At the encoder's 32 kb/s this is about 720 KB: a note never gets near the bubble limit.
MAX_NOTE_SECONDS = 180.0


@dataclass(frozen=True)
class SpokenSentence:
    text: str
    audio: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


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


async def send_note(replier: Replier, sentences: list[SpokenSentence], with_text: bool) -> None:
    """Encode sentences as one OGG/Opus voice note and send it, captioned with their text if wanted."""
    audio = np.concatenate([sentence.audio for sentence in sentences])
    rate = sentences[0].sample_rate
    ogg = await asyncio.to_thread(encode_ogg_opus, audio, rate)
    if len(ogg) > VOICE_BUBBLE_BYTES and len(sentences) > 1:
        half = len(sentences) // 2  # too big for a bubble: two notes, still cut at a sentence end
        await send_note(replier, sentences[:half], with_text)
        await send_note(replier, sentences[half:], with_text)
        return
    if len(ogg) > VOICE_BUBBLE_BYTES:
        log.warning("one sentence made a %d byte voice note: it will arrive as a file", len(ogg))
    spoken = " ".join(sentence.text for sentence in sentences)
    await replier.voice(ogg, len(audio) / rate, spoken if with_text else None, spoken)


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
    await send_answer(
        conversation.turn(who, audio=audio, text=text),
        replier,
        with_text=with_text,
        follow_up_min_seconds=follow_up_min_seconds,
    )


async def send_answer(
    turn: AsyncIterator[TurnEvent], replier: Replier, *, with_text: bool, follow_up_min_seconds: float
) -> None:
    """Send a turn's events as they come (a new turn's, or a resumed one's). Raises `TurnError` likewise."""
    outbox = Outbox()
    texts: dict[int, str] = {}
    chunks: dict[int, list[np.ndarray]] = defaultdict(list)
    spoken: set[int] = set()
    pending: list[SpokenSentence] = []
    notes = 0
    rate = CSM_RATE

    def flush() -> None:
        nonlocal pending, notes
        if pending:
            outbox.put(lambda note=pending: send_note(replier, note, with_text))
            pending = []
            notes += 1

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
                    elif isinstance(event, SpeechChunk):
                        chunks[event.sentence_index].append(event.audio)
                        rate = event.sample_rate
                    elif isinstance(event, SentenceSpoken) and chunks.get(event.index):
                        sentence = SpokenSentence(texts[event.index], np.concatenate(chunks.pop(event.index)), rate)
                        spoken.add(event.index)
                        if pending and sum(s.seconds for s in pending) + sentence.seconds > MAX_NOTE_SECONDS:
                            flush()
                        pending.append(sentence)
                        if notes == 0 or sum(s.seconds for s in pending) >= follow_up_min_seconds:
                            flush()
                    elif isinstance(event, SpeechUnavailable):
                        flush()
                        say(event.message)
        except TurnError as error:
            failure = error  # send what was made first, then let the guard tell the user
        flush()
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
