"""When aLAN speaks in a group (groundwork of issue 11): addressed by name at the start or the end, a follow-up
by the person it just answered, a question right after it spoke; alone it answers everything."""

from __future__ import annotations

import pytest

from engine.addressing import (
    FOLLOW_UP_SECONDS,
    QUESTION_SECONDS,
    AddressDetector,
    GroupFloor,
    ListenMode,
    should_answer,
)

ALAN = AddressDetector()


@pytest.mark.parametrize(
    "text",
    [
        "Alan, what do you think?",
        "What do you think, Alan?",
        "Hey Allen, are you there?",  # one of Whisper's spellings, after a greeting
        "allan what's the time",
        "Is that right, Alún?",
        "so what do you think alan",
        "Arlin, tell us a joke.",  # what Whisper base wrote for espeak's "Alan": the r is silent
    ],
)
def test_the_name_at_the_start_or_the_end_addresses_alan(text: str) -> None:
    assert ALAN.addressed(text)


@pytest.mark.parametrize(
    "text",
    [
        "I told Alan about it yesterday and he didn't mind at all",  # about aLAN, not to it
        "What do you think?",
        "Ellen, can you pass the salt?",  # someone else's name
        "I'll be alone tonight",
        "Aaron, tell us a joke.",  # an r before a vowel is a sound: another name
        "",
    ],
)
def test_other_words_do_not(text: str) -> None:
    assert not ALAN.addressed(text)


def test_a_name_of_several_words_and_aliases() -> None:
    detector = AddressDetector("Mister Robot", aliases=("Robo",))
    assert detector.addressed("Mister Robot, hello")
    assert detector.addressed("how are you robo")
    assert not detector.addressed("hello mister")
    with pytest.raises(ValueError):
        AddressDetector("  ")


def test_who_gets_an_answer_in_a_group() -> None:
    floor = GroupFloor()

    def answer(speaker: str, text: str, now: float, mode: ListenMode = ListenMode.ADDRESSED, people: int = 2) -> bool:
        return should_answer(ALAN, floor, mode, speaker, text, now, people)

    assert not answer("A", "Did you see the game last night?", 0.0)  # A talks to B: stored, no answer
    assert answer("B", "Alan, what do you think?", 3.0)
    floor.spoke_to("B", 10.0)
    assert answer("B", "and the score was fine", 10.0 + FOLLOW_UP_SECONDS - 1)  # B's follow-up, in the window
    assert not answer("A", "and the score was fine", 10.0 + FOLLOW_UP_SECONDS + 1)  # A, after it
    assert not answer("A", "and the score was fine", 11.0)  # A is not the one it answered
    assert answer("A", "really, why?", 10.0 + QUESTION_SECONDS - 1)  # a question right after it spoke
    assert not answer("A", "really, why?", 10.0 + QUESTION_SECONDS + 1)
    assert answer("A", "nice weather", 100.0, people=1)  # alone: every utterance
    assert answer("A", "nice weather", 100.0, mode=ListenMode.ALWAYS)
    assert not answer("A", "Alan, what do you think?", 100.0, mode=ListenMode.OFF)  # only listening
    assert not answer("A", "Alan, hi", 100.0, mode=ListenMode.OFF, people=1)


def test_a_question_already_under_way_to_someone_else_is_not_put_to_alan() -> None:
    floor = GroupFloor()
    floor.spoke_to("B", finished_at=20.0, began_at=15.0)
    # A began asking B before aLAN started speaking (aLAN waited for her to finish): not for aLAN.
    assert not should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", "shall we go?", 12.0, 2)
    # Asked while aLAN spoke, or right after: for aLAN.
    assert should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", "shall we go?", 17.0, 2)
    # B, the one aLAN answered, adding to their question before the reply began: a follow-up all the same.
    assert should_answer(ALAN, floor, ListenMode.ADDRESSED, "B", "and also the score", 12.0, 2)



def test_words_for_someone_else_present_are_theirs() -> None:
    floor = GroupFloor()
    floor.spoke_to("B", finished_at=20.0, began_at=15.0)
    others = ["Bob Smith", "Carol", "xX_42_Xx"]
    for text in ("Bob, are you coming?", "are you coming, Carol?"):  # a question right after aLAN spoke, to them
        assert not should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", text, 21.0, 3, others)
        assert should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", text, 21.0, 3)  # nobody by that name here
    assert should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", "Alan, is Bob coming?", 99.0, 3, others)
    # Other people's names are often words: only their name set off by a comma counts, spelled as it is.
    floor.spoke_to("A", finished_at=20.0, began_at=15.0)
    people = ["Will", "Mike", "The Rock", "Al Jones", "Дмитрий", "🔥 Sam"]
    for text in ("will it rain tomorrow?", "make it shorter please", "what is the capital?", "all right, and then?"):
        assert should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", text, 21.0, 3, people)  # A's follow-ups
    for text in ("Will, are you coming?", "Дмитрий, ты где?", "come on, Sam!", "the rock, hey"):
        assert not should_answer(ALAN, floor, ListenMode.ADDRESSED, "A", text, 21.0, 3, people)
