"""Linking accounts in the database: one-time codes, and merging two people into one (or splitting one off again).

A code is random (10 characters of an unambiguous 32-letter alphabet: 50 bits), bound to the account that asked for
it, stored only as its SHA-256, single use and valid for `CODE_LIFETIME`. An account that sends `MAX_FAILURES`
wrong codes within `FAILURE_WINDOW` must wait: with 50 bits and five tries an hour, guessing is hopeless.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import BadInputError
from engine.store.faults import RETRY_DELAYS_S, guarded
from engine.store.models import LinkAttempt, LinkCode, Memory, Person, User, UserVoiceChoice, Voice, utcnow
from engine.store.voice_store import EVERYWHERE

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud or typed, nothing to confuse
CODE_LENGTH = 10
CODE_LIFETIME = timedelta(minutes=10)
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(hours=1)

BAD_CODE = (
    "That code doesn't work: it may be mistyped, already used or expired (a code lasts 10 minutes). "
    "Ask for a new one with /link on your other account."
)
TOO_MANY = "Too many wrong codes from this account. Please wait an hour, then ask for a new code with /link."
OWN_CODE = "That's this account's own code: send it to me from your other account."
ALREADY = "These two accounts are already linked."


class LinkError(BadInputError):
    """A code that links nothing; the message says why, and never whose code it might have been."""


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalise(code: str) -> str:
    """A code as typed ("abcde-fghjk", with spaces) in its canonical form."""
    return re.sub(r"[^A-Z0-9]", "", code.upper())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands datetimes back naive


class LinkStore:
    def __init__(self, sessions: sessionmaker[Session], *, retry_delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.sessions = sessions
        self.retry_delays = retry_delays

    @guarded("I couldn't make a code")
    def issue(self, user_id: int) -> str:
        """A new code for this account (any earlier one stops working)."""
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        with self.sessions.begin() as session:
            session.merge(LinkCode(user_id=user_id, code_hash=_hash(code), expires_at=utcnow() + CODE_LIFETIME))
        return f"{code[:5]}-{code[5:]}"

    @guarded("I couldn't void that code")
    def void(self, code: str) -> bool:
        """Make a code that was shown where others could read it (a group) useless. Counts no failure."""
        with self.sessions.begin() as session:
            statement = delete(LinkCode).where(LinkCode.code_hash == _hash(normalise(code)))
            return bool(session.execute(statement).rowcount)

    @guarded("I couldn't check that code")
    def holder(self, user_id: int, code: str) -> User:
        """The account that asked for `code`, for the person to confirm; nothing is linked yet. Raises `LinkError`
        (counting a wrong code against this account)."""
        with self.sessions.begin() as session:
            return self._holder(session, user_id, code)

    @guarded("I couldn't link the accounts")
    def link(self, user_id: int, code: str) -> User:
        """Use up `code`: this account's person joins the code holder's (facts, accounts; voices follow the
        accounts). Returns the holder's account. Raises `LinkError` as `holder` does."""
        with self.sessions.begin() as session:
            holder = self._holder(session, user_id, code)
            me = session.get_one(User, user_id)
            # Used up here, atomically: of two sends of one code at once, only one finds it still there.
            consumed = session.execute(
                delete(LinkCode).where(LinkCode.user_id == holder.id, LinkCode.code_hash == _hash(normalise(code)))
            )
            if consumed.rowcount != 1:
                raise LinkError(BAD_CODE)
            session.execute(delete(LinkAttempt).where(LinkAttempt.user_id == user_id))
            target, joining = session.get_one(Person, holder.person_id), session.get_one(Person, me.person_id)
            target.memory_enabled = target.memory_enabled and joining.memory_enabled  # off on either side: off
            target.summary = " ".join(part for part in (target.summary, joining.summary) if part) or None
            known = {" ".join(fact.text.casefold().split()) for fact in self._facts(session, target.id)}
            for fact in self._facts(session, joining.id):
                key = " ".join(fact.text.casefold().split())
                if key in known:
                    session.delete(fact)  # told on both accounts: kept once
                else:
                    known.add(key)
                    fact.person_id = target.id
            accounts = session.scalars(select(User.id).where(User.person_id == joining.id)).all()
            holders = session.scalars(select(User.id).where(User.person_id == target.id)).all()
            session.execute(update(User).where(User.person_id == joining.id).values(person_id=target.id))
            session.flush()
            session.delete(joining)
            # One active voice: the holder's choice for everywhere (else the joining account's) is now everyone's.
            chosen = session.get(UserVoiceChoice, (holder.id, EVERYWHERE))
            spread_to = accounts
            if chosen is None:
                chosen, spread_to = session.get(UserVoiceChoice, (user_id, EVERYWHERE)), holders
            for account in spread_to if chosen is not None else []:
                session.merge(UserVoiceChoice(user_id=account, scope=EVERYWHERE, voice_id=chosen.voice_id))
            session.flush()
            session.expunge(holder)
            return holder

    @guarded("I couldn't unlink the accounts")
    def unlink(self, user_id: int) -> bool:
        """This account becomes a person of its own again, keeping the voices it made and a copy of the facts;
        the other accounts keep the rest. False when it wasn't linked."""
        with self.sessions.begin() as session:
            me = session.get_one(User, user_id)
            others = session.scalars(select(User.id).where(User.person_id == me.person_id, User.id != user_id)).all()
            if not others:
                return False
            shared = session.get_one(Person, me.person_id)
            alone = Person(memory_enabled=shared.memory_enabled, summary=shared.summary,
                           summary_through=shared.summary_through)  # fmt: skip
            session.add(alone)
            session.flush()
            for fact in self._facts(session, shared.id):
                session.add(Memory(person_id=alone.id, text=fact.text, platform=fact.platform, scope=fact.scope,
                                   said_at=fact.said_at, uses=fact.uses, updated_at=fact.updated_at,
                                   created_at=fact.created_at))  # fmt: skip
            me.person_id = alone.id
            # A choice of a voice that now belongs to someone else is no choice any more, on either side.
            mine = select(Voice.id).where(Voice.owner_id == user_id)
            session.execute(
                delete(UserVoiceChoice).where(UserVoiceChoice.user_id == user_id, UserVoiceChoice.voice_id.in_(
                    select(Voice.id).where(Voice.owner_id.in_(others))))
            )  # fmt: skip
            session.execute(
                delete(UserVoiceChoice).where(UserVoiceChoice.user_id.in_(others), UserVoiceChoice.voice_id.in_(mine))
            )
            return True

    @guarded("I couldn't look up your accounts")
    def linked(self, user_id: int) -> list[User]:
        """The other accounts of this account's person."""
        with self.sessions() as session:
            person = select(User.person_id).where(User.id == user_id).scalar_subquery()
            return list(session.scalars(select(User).where(User.person_id == person, User.id != user_id)).all())

    # -- inside a transaction ------------------------------------------------------------------------------

    def _holder(self, session: Session, user_id: int, code: str) -> User:
        now = utcnow()
        attempts = session.get(LinkAttempt, user_id)
        if attempts is not None and now - _aware(attempts.since) > FAILURE_WINDOW:
            attempts.failures, attempts.since = 0, now
        if attempts is not None and attempts.failures >= MAX_FAILURES:
            raise LinkError(TOO_MANY)
        found = session.scalar(select(LinkCode).where(LinkCode.code_hash == _hash(normalise(code))))
        if found is None or _aware(found.expires_at) <= now:
            if attempts is None:
                session.add(LinkAttempt(user_id=user_id, failures=1, since=now))
            else:  # counted in SQL: two wrong codes at once both count
                session.execute(
                    update(LinkAttempt)
                    .where(LinkAttempt.user_id == user_id)
                    .values(failures=LinkAttempt.failures + 1, since=attempts.since)
                )
            # Committed with the failure counted: a wrong code is an error for the person, not for the database.
            session.commit()
            raise LinkError(BAD_CODE)
        if found.user_id == user_id:
            raise LinkError(OWN_CODE)
        holder = session.get_one(User, found.user_id)
        me = session.get_one(User, user_id)
        if holder.person_id == me.person_id:
            raise LinkError(ALREADY)
        return holder

    @staticmethod
    def _facts(session: Session, person_id: int) -> list[Memory]:
        return list(session.scalars(select(Memory).where(Memory.person_id == person_id).order_by(Memory.id)).all())
