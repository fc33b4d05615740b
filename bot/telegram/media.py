"""Incoming audio: which messages hold something to listen to, and fetching it within the caps.

What Telegram tells us about a file (its duration, its size) is checked *before* anything is downloaded, so
a two-hour voice note or a 1 GB upload costs one short reply instead of a download; the duration cap is
enforced again while decoding (the engine does that), since documents carry no duration and metadata can lie.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

from telegram import Bot, Message
from telegram.error import BadRequest, TelegramError
from telegram.warnings import PTBDeprecationWarning

from alan.settings import DEFAULT_TELEGRAM_API_URL
from bot.telegram.send import RetryPolicy, with_retries
from engine.errors import BadInputError, TurnError

log = logging.getLogger(__name__)

# Telegram's cloud Bot API lets bots download files up to 20 MB; a self-hosted Bot API server has no cap.
CLOUD_DOWNLOAD_LIMIT = 20 * 1024 * 1024
AUDIO_EXTENSIONS = frozenset({".mp3", ".m4a", ".wav", ".ogg", ".oga", ".opus", ".flac", ".aac", ".weba"})
NOT_AUDIO = "I can only listen to audio: send me a voice note or an audio file (MP3, M4A, WAV or OGG)."
UNSUPPORTED = "I understand voice notes, audio files, video notes and text — not this kind of message, sorry."
TOO_BIG_FOR_TELEGRAM = "That file is too large for me to download from Telegram (bots can fetch up to 20 MB)."
DOWNLOAD_FAILED = "I couldn't download your {kind} from Telegram. Please send it again."


class DownloadFailedError(TurnError):
    """Telegram didn't hand the file over, even after retries: the person is asked to send it again."""


@dataclass(frozen=True)
class Attachment:
    """An audio file in a message, with what Telegram says about it."""

    file_id: str
    kind: str  # for messages to the user: "voice note", "audio file", "video note"
    seconds: float | None
    size: int | None


def _seconds(value: int | dt.timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def find_audio(message: Message | None) -> Attachment | None:
    """The audio to listen to in `message`: a voice note, an audio file, a video note or an audio document."""
    if message is None:
        return None
    # python-telegram-bot 22 warns when a duration is read as an int; either form is fine here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        if message.voice:
            return Attachment(
                message.voice.file_id, "voice note", _seconds(message.voice.duration), message.voice.file_size
            )
        if message.audio:
            return Attachment(
                message.audio.file_id, "audio file", _seconds(message.audio.duration), message.audio.file_size
            )
        if message.video_note:
            return Attachment(
                message.video_note.file_id,
                "video note",
                _seconds(message.video_note.duration),
                message.video_note.file_size,
            )
    document = message.document
    if document and is_audio_document(document.mime_type, document.file_name):
        return Attachment(document.file_id, "audio file", None, document.file_size)
    return None


def is_audio_document(mime_type: str | None, file_name: str | None) -> bool:
    # Clients label files inconsistently (M4A as video/mp4, OGG as application/ogg): trust either hint.
    if mime_type and (mime_type.startswith("audio/") or mime_type in ("application/ogg", "video/mp4")):
        return True
    return bool(file_name) and PurePosixPath(file_name or "").suffix.lower() in AUDIO_EXTENSIONS


def download_limit(api_url: str, max_audio_bytes: int) -> int:
    """The largest file worth fetching: our own cap, and Telegram's 20 MB on its cloud server."""
    if api_url.rstrip("/") == DEFAULT_TELEGRAM_API_URL:
        return min(max_audio_bytes, CLOUD_DOWNLOAD_LIMIT)
    return max_audio_bytes


def _describe_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


def check_before_download(attachment: Attachment, *, max_seconds: float, max_bytes: int) -> None:
    """Refuse, with a message for the user, what Telegram already says is too long or too large."""
    if attachment.seconds is not None and attachment.seconds > max_seconds:
        raise BadInputError(
            f"That {attachment.kind} is {_describe_seconds(attachment.seconds)} long: I can listen to at most "
            f"{_describe_seconds(max_seconds)}. Please send a shorter one."
        )
    if attachment.size is not None and attachment.size > max_bytes:
        raise BadInputError(_too_large(attachment.kind, attachment.size, max_bytes))


def _too_large(kind: str, size: int, max_bytes: int) -> str:
    return f"That {kind} is too large ({size / 1_048_576:.1f} MB): the most I take is {max_bytes / 1_048_576:.0f} MB."


async def download(
    bot: Bot, attachment: Attachment, *, max_seconds: float, max_bytes: int, policy: RetryPolicy
) -> bytes:
    """Check the caps, then fetch the file's bytes (retrying Bot API trouble).

    Raises `BadInputError` (too long, too large, empty) or `DownloadFailedError`, both messages for the person.
    """
    check_before_download(attachment, max_seconds=max_seconds, max_bytes=max_bytes)
    try:
        file = await with_retries(lambda: bot.get_file(attachment.file_id), policy, "getFile")
    except BadRequest as error:
        log.info("getFile refused %s: %s", attachment.kind, error)
        if "too big" in str(error).lower():
            raise BadInputError(TOO_BIG_FOR_TELEGRAM) from error
        raise DownloadFailedError(DOWNLOAD_FAILED.format(kind=attachment.kind)) from error
    except TelegramError as error:  # still failing after the retries
        log.warning("could not get a %s from Telegram (getFile: %s)", attachment.kind, error)
        raise DownloadFailedError(DOWNLOAD_FAILED.format(kind=attachment.kind)) from error
    if file.file_size is not None and file.file_size > max_bytes:
        raise BadInputError(_too_large(attachment.kind, file.file_size, max_bytes))
    try:
        data = await with_retries(file.download_as_bytearray, policy, "file download")
    except TelegramError as error:  # a 404 arrives as InvalidToken, a 5xx or a broken connection as NetworkError
        log.warning("could not download a %s from Telegram: %s", attachment.kind, error)
        raise DownloadFailedError(DOWNLOAD_FAILED.format(kind=attachment.kind)) from error
    if len(data) > max_bytes:
        raise BadInputError(_too_large(attachment.kind, len(data), max_bytes))
    if not data:
        raise BadInputError(f"That {attachment.kind} arrived empty: please send it again.")
    return bytes(data)
