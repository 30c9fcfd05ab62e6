"""Job and token ids: ULIDs, 26 Crockford base32 characters that sort by creation time."""

from __future__ import annotations

import time

from app.core.ids import new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_millis(ulid: str) -> int:
    """The 48-bit millisecond timestamp held in the first 10 characters."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_ids_are_26_crockford_base32_characters() -> None:
    for _ in range(200):
        ulid = new_id()
        assert len(ulid) == 26
        assert set(ulid) <= set(CROCKFORD), ulid


def test_first_character_leaves_room_for_the_128_bit_value() -> None:
    # 26 characters carry 130 bits; a 128-bit ULID's first character is at most '7'.
    assert all(new_id()[0] in "01234567" for _ in range(50))


def test_ids_carry_the_current_time_in_milliseconds() -> None:
    before = int(time.time() * 1000)
    ulid = new_id()
    after = int(time.time() * 1000)
    assert before <= ulid_millis(ulid) <= after


def test_ids_made_in_later_milliseconds_sort_after_earlier_ones() -> None:
    made = []
    for _ in range(20):
        made.append(new_id())
        time.sleep(0.002)
    assert sorted(made) == made
    assert len({ulid_millis(ulid) for ulid in made}) == len(made)


def test_ids_made_in_the_same_millisecond_are_still_unique() -> None:
    made = [new_id() for _ in range(5000)]
    assert len(set(made)) == len(made)
