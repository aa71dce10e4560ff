"""Independent calls made side by side: results in order, nothing left running, the caller's context carried."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from ckpt.adapters.threads import ThreadedCalls
from ckpt.promotion.ports import InOrder

request = contextvars.ContextVar("request", default="none")


def test_results_come_back_in_the_order_of_the_calls():
    calls = ThreadedCalls()
    assert calls.all([lambda: time.sleep(0.05) or "first", lambda: "second", lambda: "third"]) == [
        "first",
        "second",
        "third",
    ]


def test_the_calls_run_at_the_same_time():
    both_started = threading.Barrier(2, timeout=5)  # one after the other, the first would wait here in vain
    assert sorted(ThreadedCalls().all([both_started.wait, both_started.wait])) == [0, 1]  # each one's arrival


def test_in_order_runs_them_one_after_the_other():
    one_at_a_time = threading.Barrier(2, timeout=0.2)
    with pytest.raises(threading.BrokenBarrierError):
        InOrder().all([one_at_a_time.wait, one_at_a_time.wait])


def test_a_failure_is_raised_only_after_every_call_has_ended():
    ended = threading.Event()

    def fails() -> None:
        raise ValueError("first")

    def slow() -> None:
        time.sleep(0.2)
        ended.set()

    with pytest.raises(ValueError, match="first"):
        ThreadedCalls().all([fails, slow])
    assert ended.is_set()


def test_when_several_fail_the_first_in_order_is_raised():
    def fails_late() -> None:
        time.sleep(0.1)
        raise KeyError("first")

    def fails_now() -> None:
        raise ValueError("second")

    with pytest.raises(KeyError, match="first"):
        ThreadedCalls().all([fails_late, fails_now])


def test_each_call_sees_the_callers_context():
    request.set("promotion 7")
    assert ThreadedCalls().all([request.get, request.get]) == ["promotion 7", "promotion 7"]


def test_carry_wraps_each_call_in_the_callers_thread():
    wrapped_in: list[str] = []

    def carry(call):
        wrapped_in.append(threading.current_thread().name)
        return lambda: ("carried", call())

    assert ThreadedCalls(carry=carry).all([lambda: 1, lambda: 2]) == [("carried", 1), ("carried", 2)]
    assert wrapped_in == [threading.current_thread().name] * 2
