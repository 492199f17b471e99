"""The Outbox: calls run off the caller's thread, in order, and a failing call is retried until it succeeds."""
import threading

from pipeline.outbox import Outbox


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
