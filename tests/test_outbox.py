"""The Outbox: calls run off the caller's thread, in order, and a failing call is retried until it succeeds."""
import threading

import pytest

from pipeline.tracking import outbox
from pipeline.tracking.outbox import PERMANENT_TRIES, Outbox


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retry pauses of 10 ms instead of 0.5 s and up: the order and the counting are what is tested here."""
    monkeypatch.setattr(outbox, "RETRY_FIRST_S", 0.01)


def test_failing_calls_are_retried_in_order_and_nothing_is_lost():
    delivered, attempts = [], {"b": 0}

    def flaky():
        attempts["b"] += 1
        if attempts["b"] < 3:  # the store is down for two attempts
            raise ConnectionError("server down")
        delivered.append("b")

    outbox = Outbox()
    outbox.submit("a", lambda: delivered.append("a"))
    outbox.submit("b", flaky)
    outbox.submit("c", lambda: delivered.append("c"))
    assert outbox.close(timeout_s=30)
    assert delivered == ["a", "b", "c"] and attempts["b"] == 3 and outbox.failures == 2


def test_calls_leave_the_submitting_thread():
    seen, outbox = [], Outbox()
    outbox.submit("where", lambda: seen.append(threading.current_thread().name))
    assert outbox.close(timeout_s=10)
    assert seen == ["optlab-outbox"] and threading.current_thread().name != "optlab-outbox"


def test_a_permanent_failure_is_given_up_reported_once_and_holds_nothing_back(capsys):
    delivered, reported, attempts = [], [], {"bad": 0}

    def unwritable():
        attempts["bad"] += 1
        raise NotADirectoryError(20, "Not a directory", "/store/checkpoints")

    outbox = Outbox(is_permanent=lambda error: isinstance(error, NotADirectoryError))
    outbox.submit("checkpoint 1", unwritable, on_give_up=reported.append)
    outbox.submit("metrics", lambda: delivered.append("metrics"))
    outbox.submit("checkpoint 2", unwritable, on_give_up=reported.append)
    assert outbox.flush(timeout_s=30)
    assert delivered == ["metrics"]
    assert attempts["bad"] == 2 * PERMANENT_TRIES
    assert [type(error) for error in reported] == [NotADirectoryError, NotADirectoryError]
    assert [what for what, _ in outbox.given_up] == ["checkpoint 1", "checkpoint 2"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "gave up" in line]
    assert len(warnings) == 1 and "checkpoint 1" in warnings[0] and "/store/checkpoints" in warnings[0]
    assert outbox.close(timeout_s=10) is False  # something was lost: the caller must say so


def test_transient_failures_are_not_given_up_however_many():
    attempts = {"n": 0}

    def down_for_a_while():
        attempts["n"] += 1
        if attempts["n"] <= PERMANENT_TRIES + 1:
            raise ConnectionError("server down")

    outbox = Outbox(is_permanent=lambda error: isinstance(error, NotADirectoryError))
    outbox.submit("metrics", down_for_a_while)
    assert outbox.close(timeout_s=60) and attempts["n"] == PERMANENT_TRIES + 2 and not outbox.given_up
