"""DAVE (Discord's end-to-end encryption) on the receive side: when to decrypt, and when plaintext may pass.

The rule is the DAVE protocol's, as Discord's own clients and discord.js apply it:

* protocol version 0 (transport-only encryption, e.g. after a downgrade for a client without DAVE): senders do not
  end-to-end encrypt, so frames pass as they are. discord.py keeps its davey session (still "ready") on a
  downgrade and only sets the connection's `dave_protocol_version` to 0, so the version must be read from the
  connection, never inferred from `session.ready`. A DAVE frame still in flight is decrypted if davey can.
* in the middle of an upgrade or downgrade transition (prepared, not yet executed), senders switch at different
  moments: plaintext passes (passthrough) and DAVE frames are decrypted.
* otherwise the davey session decides, and it refuses plaintext unless that sender's decryptor is in its own
  passthrough mode.

A DAVE frame is recognised by its footer exactly as davey's decryptor parses it (`looks_dave_encrypted`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import davey
from discord.gateway import DiscordVoiceWebSocket

# Every DAVE-encrypted frame ends with this marker (daveprotocol.com, "Frame format").
DAVE_MAGIC = b"\xfa\xfa"
# The smallest footer: 8-byte truncated AES-GCM tag, a 1-byte nonce, the footer size byte and the magic marker.
# davey's InboundFrameProcessor uses the same bound to tell an encrypted frame from a plain one.
MIN_SUPPLEMENTAL_SIZE = 8 + 1 + 2
# A transition that the voice server never executes must not leave plaintext accepted for good. discord.py gives a
# pending downgrade's passthrough 120 s; nothing legitimate takes longer.
MAX_TRANSITION_SECONDS = 120.0
# Op 24 (prepare epoch) with epoch 1 announces a new group (an upgrade, or the group re-created): its welcome brings
# every member to MLS epoch 1, and each later re-key moves the epoch on.
NEW_GROUP_EPOCH = 1


class DaveError(ValueError):
    """An end-to-end encrypted frame could not be decrypted (or plaintext came where DAVE is required)."""


def looks_dave_encrypted(payload: bytes) -> bool:
    """True when `payload` carries a well-formed DAVE footer (magic marker and a plausible supplemental size)."""
    if len(payload) < MIN_SUPPLEMENTAL_SIZE or not payload.endswith(DAVE_MAGIC):
        return False
    supplemental = payload[-len(DAVE_MAGIC) - 1]
    return MIN_SUPPLEMENTAL_SIZE <= supplemental <= len(payload)


def dave_decrypt(
    session: davey.DaveSession | None,
    user_id: int,
    payload: bytes,
    *,
    protocol_version: int = davey.DAVE_PROTOCOL_VERSION,
    in_transition: bool = False,
) -> bytes:
    """Undo DAVE end-to-end encryption of one Opus frame, or pass it through where the protocol allows it."""
    if session is None:
        return payload  # DAVE was never negotiated on this connection
    encrypted = looks_dave_encrypted(payload)
    if not encrypted and (protocol_version == 0 or in_transition):
        return payload  # passthrough: transport-only encryption, or senders are switching over
    if not session.ready:
        if encrypted:
            raise DaveError("end-to-end encrypted frame while this side's DAVE group is not established")
        return payload  # no group yet (we are joining): nobody can be encrypting to us
    try:
        # davey refuses plaintext here unless that sender's decryptor is in passthrough mode.
        return session.decrypt(user_id, davey.MediaType.audio, payload)
    except Exception as error:  # ValueError for a bad frame; anything else must not kill the socket thread
        raise DaveError(str(error)) from error


class TransitionWatch:
    """Tells from discord.py's connection state whether a DAVE upgrade or downgrade is under way.

    discord.py records each prepared transition in `dave_pending_transitions` (transition id -> protocol version)
    and removes it when op 22 executes it, but it writes the *current* version for transitions announced by a
    commit or welcome (ops 29/30), and it switches the version to the new one as soon as op 24 asks for a new group.
    So an upgrade is recognised by what surrounds it: the new group announced by op 24 (epoch 1), or discord.py's
    `dave_downgraded` flag. A re-key of a running DAVE group is not a transition in this sense: plaintext stays
    refused there, as the protocol asks.
    """

    def __init__(self, max_seconds: float = MAX_TRANSITION_SECONDS) -> None:
        self.max_seconds = max_seconds
        self._new_group = False  # op 24 (epoch 1) seen and the new group not in place yet
        self._new_group_since: float | None = None  # when `in_transition` first saw that new group under way
        self._first_seen: dict[int, float] = {}  # transition id -> when `in_transition` first saw it pending
        # `in_transition` runs on discord.py's socket thread (every datagram) and on the event loop (SPEAKING
        # replays), and `on_voice_event` on the event loop: every read-modify-write of the state above holds this.
        self._lock = threading.Lock()

    def on_voice_event(self, op: Any, data: Mapping[str, Any]) -> None:
        """Learn from a voice gateway JSON message (after discord.py has handled it)."""
        with self._lock:
            if op == DiscordVoiceWebSocket.DAVE_PREPARE_EPOCH and data.get("epoch") == NEW_GROUP_EPOCH:
                self._new_group, self._new_group_since = True, None
            elif op in (DiscordVoiceWebSocket.DAVE_EXECUTE_TRANSITION, DiscordVoiceWebSocket.READY):
                self._new_group, self._new_group_since = False, None

    def in_transition(self, connection: Any, now: float) -> bool:
        """Whether the live connection is between a prepared and an executed upgrade or downgrade."""
        pending: dict[int, int] = dict(getattr(connection, "dave_pending_transitions", None) or {})
        session = getattr(connection, "dave_session", None)
        with self._lock:
            self._first_seen = {tid: self._first_seen.get(tid, now) for tid in pending}
            live = [tid for tid, since in self._first_seen.items() if now - since <= self.max_seconds]
            new_group = self._new_group_under_way(bool(pending), session, now)
        if not live:
            return False
        version = getattr(connection, "dave_protocol_version", 0)
        if any(pending[tid] != version for tid in live):
            return True  # op 21 prepared a change of protocol version (a downgrade to 0, or an upgrade)
        return new_group or bool(getattr(connection, "dave_downgraded", False))

    def _new_group_under_way(self, anything_pending: bool, session: Any, now: float) -> bool:
        # Called with the lock held. The new group is in place once the re-created session is in a group (ready) and
        # either nothing is pending or its MLS epoch has moved past the group's first (op 24's epoch 1): a welcome or
        # commit with transition id 0 is executed at once (discord.py records nothing pending, no op 22 follows), so
        # what is pending after it is a re-key of the running group. Before the welcome nothing is pending either,
        # but the session is not ready then. Like a pending transition, it never stays open past `max_seconds`.
        if not self._new_group:
            return False
        if self._new_group_since is None:
            self._new_group_since = now
        in_place = (
            session is not None
            and session.ready
            and (not anything_pending or (getattr(session, "epoch", None) or 0) > NEW_GROUP_EPOCH)
        )
        if in_place or now - self._new_group_since > self.max_seconds:
            self._new_group, self._new_group_since = False, None
        return self._new_group
