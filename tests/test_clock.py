"""The worker's clock correction (engine.core.clock): Temporal's time when ours is far off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core import clock, ids
from engine.core.ids import new_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _seconds_of(made_id: str) -> float:
    """The time an id carries (its first ten digits: milliseconds), in seconds."""
    id_ms = 0
    for char in made_id[:10]:
        id_ms = id_ms * 32 + ALPHABET.index(char)
    return id_ms / 1000


@pytest.fixture(autouse=True)
def fresh_clock() -> Iterator[None]:
    clock._recent.clear()
    clock._offset_ns = 0
    ids._last_ms = 0
    yield
    clock._recent.clear()
    clock._offset_ns = 0


def test_a_clock_within_tolerance_is_left_alone() -> None:
    clock.observe(datetime.now(UTC) + timedelta(seconds=3))
    assert clock.offset() == timedelta(0)


@pytest.mark.parametrize("skew", [600, -600])
def test_a_far_off_clock_takes_the_servers_time(skew: int) -> None:
    clock.observe(datetime.now(UTC) + timedelta(seconds=skew))
    assert abs(clock.offset() - timedelta(seconds=skew)) < timedelta(seconds=1)
    assert abs(clock.now() - datetime.now(UTC) - timedelta(seconds=skew)) < timedelta(seconds=1)
    # The time part of new ids follows it.
    assert abs(_seconds_of(new_id()) - time.time() - skew) < 1


def test_the_least_delayed_recent_observation_wins() -> None:
    real = datetime.now(UTC) + timedelta(seconds=600)
    for late in (0.3, 0.05, 0.2):  # each task arrived this late: the server's stamp is older
        clock.observe(real - timedelta(seconds=late))
    assert abs(clock.offset() - timedelta(seconds=599.95)) < timedelta(milliseconds=20)


def test_a_clock_set_right_is_followed_at_once() -> None:
    clock.observe(datetime.now(UTC) + timedelta(seconds=600))
    clock.observe(datetime.now(UTC))
    assert clock.offset() == timedelta(0)


def test_a_drifting_clock_is_followed_within_the_window() -> None:
    clock.observe(datetime.now(UTC) + timedelta(seconds=600))
    for _ in range(clock.RECENT):
        clock.observe(datetime.now(UTC) + timedelta(seconds=598))
    assert abs(clock.offset() - timedelta(seconds=598)) < timedelta(milliseconds=50)


def test_ids_follow_the_clock_back_after_a_correction() -> None:
    clock.observe(datetime.now(UTC) + timedelta(seconds=600))
    ahead = new_id()
    clock.observe(datetime.now(UTC))
    assert new_id() < ahead  # not held 10 minutes ahead of every other process's ids
    first, second = new_id(), new_id()
    assert first < second  # and increasing again


def _digit_by_digit(value: int, length: int) -> str:
    """The ids' encoding by its definition: base-32 digits, most significant first."""
    return "".join(ALPHABET[(value >> (5 * place)) & 31] for place in reversed(range(length)))


@given(st.integers(min_value=0, max_value=2**50 - 1), st.integers(min_value=0, max_value=2**80 - 1))
def test_ids_encode_time_and_entropy_digit_for_digit(ms: int, entropy: int) -> None:
    assert ids._encode(ms, 10) == _digit_by_digit(ms, 10)
    assert ids._encode(entropy, 16) == _digit_by_digit(entropy, 16)
    if ms + 1 < 2**50:  # equal-length digits sort as their numbers do
        assert ids._encode(ms, 10) < ids._encode(ms + 1, 10)


def test_ids_of_one_millisecond_share_its_time_and_increase() -> None:
    made = [new_id() for _ in range(200)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(abs(_seconds_of(made_id) - time.time()) < 5 for made_id in made)
