"""``read_ahead``: order kept, failures per item, and how much waits decoded ahead."""

from __future__ import annotations

import time

import pytest

from segkit.io.readahead import HELD, default_workers, read_ahead


def test_results_come_in_input_order_and_a_failure_stays_with_its_item():
    def load(n: int) -> int:
        if n == 3:
            raise ValueError("broken file 3")
        return n * n

    got = []
    for n, future in read_ahead(range(8), load, lambda n: 1.0, workers=4, spare_pixels=4.0):
        if n == 3:
            with pytest.raises(ValueError, match="broken file 3"):
                future.result()
        else:
            got.append((n, future.result()))
    assert got == [(n, n * n) for n in range(8) if n != 3]


@pytest.mark.parametrize(
    ("size", "ahead"),
    [
        (1.0, 10),  # small: as many as fit in the 10 spare pixels
        (100.0, HELD + 1),  # large: a few, whatever the budget
        (float("inf"), HELD + 1),  # unreadable header: counted as large
    ],
)
def test_what_waits_ahead_is_bounded_by_pixels_beyond_a_few_items(size, ahead):
    sized: list[int] = []  # each item is sized just before its load starts

    def pixels(n: int) -> float:
        sized.append(n)
        return size

    stream = read_ahead(range(40), lambda n: n, pixels, workers=2, spare_pixels=10.0)
    first, _ = next(stream)
    assert first == 0
    # item 0 handed out, `ahead` loads started behind it, the next item sized but held back
    assert len(sized) == 1 + ahead + 1
    assert [n for n, _ in stream] == list(range(1, 40))


def test_closing_early_cancels_what_has_not_started():
    loaded: list[int] = []

    def load(n: int) -> int:
        time.sleep(0.02)  # one worker: the queued loads wait their turn
        loaded.append(n)
        return n

    stream = read_ahead(range(100), load, lambda n: 1.0, workers=1, spare_pixels=50.0)
    first, future = next(stream)  # ~50 loads queued behind item 0
    assert (first, future.result()) == (0, 0)
    stream.close()  # no hang, no error
    done = len(loaded)
    time.sleep(0.1)
    assert len(loaded) == done  # nothing starts after the close
    assert done < 10  # the queued loads were cancelled, not run


def test_default_workers_is_between_2_and_8():
    assert 2 <= default_workers() <= 8
