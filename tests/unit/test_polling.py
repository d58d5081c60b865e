"""tests.conftest.poll, the stack suites' one wait-until helper."""

import time

import pytest

from tests.conftest import poll


def test_returns_the_first_truthy_value():
    answers = iter([None, [], 0, {"up": 1}])
    assert poll("a value", lambda: next(answers), 5, every_s=0.01) == {"up": 1}


def test_fails_naming_what_and_the_last_answer_after_the_deadline():
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"^the target: not within 0.3s \(last: \[\]\)$"):
        poll("the target", lambda: [], 0.3, every_s=0.05)
    assert 0.3 <= time.monotonic() - start < 2


def test_tries_once_more_at_the_deadline():
    start, calls = time.monotonic(), []

    def check():
        calls.append(1)
        return time.monotonic() - start >= 0.3

    assert poll("the deadline", check, 0.3, every_s=10) is True  # no try at 10 s: one at the deadline
    assert len(calls) == 2


def test_an_exception_from_the_check_is_not_swallowed():
    def check():
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        poll("a server", check, 5)
