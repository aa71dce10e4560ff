"""Trainer-side rules: how a run ended, and which epochs best.pt and last.pt hold."""

from __future__ import annotations

import math

import pytest

from ckpt.trainer.tracking import EpochTracker
from ckpt.trainer.training import Terminated, ending


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (None, ("completed", None)),
        (KeyboardInterrupt(), ("interrupted", "KeyboardInterrupt")),
        (Terminated("SIGTERM"), ("interrupted", "SIGTERM")),
        (SystemExit(0), ("completed", None)),
        (SystemExit(3), ("failed", "SystemExit: 3")),
        (ValueError("x"), ("failed", "ValueError: x")),
    ],
)
def test_how_a_run_ended(exc, expected):
    assert ending(exc) == expected


def test_terminated_is_not_caught_by_except_exception():
    assert not issubclass(Terminated, Exception)


@pytest.mark.parametrize(
    ("mode", "values", "best_each_epoch", "best"),
    [
        ("max", [0.1, 0.3, 0.2, 0.3], [True, True, False, True], 4),
        ("min", [0.5, 0.4, 0.6], [True, True, False], 2),
        ("max", [math.nan, None, 0.2], [False, False, True], 3),
        ("max", [math.nan, None], [False, False], None),
    ],
)
def test_the_tracker_says_when_to_save_best_by_the_promotions_rule(mode, values, best_each_epoch, best):
    tracker = EpochTracker(mode=mode)
    said = [tracker.report(epoch, value) for epoch, value in enumerate(values, start=1)]
    assert said == best_each_epoch
    assert (tracker.best_epoch, tracker.last_epoch) == (best, len(values))


def test_a_trainer_that_decides_the_best_itself_is_believed():
    tracker = EpochTracker()
    tracker.report(1, 0.9, is_best=True)
    tracker.report(2, 0.99, is_best=False)
    assert (tracker.best_epoch, tracker.last_epoch) == (1, 2)


@pytest.mark.parametrize("epoch", [0, -1, 2**31, 1.0, True])
def test_an_epoch_the_manifest_could_not_carry_is_refused_when_reported(epoch):
    tracker = EpochTracker()
    with pytest.raises(ValueError, match="1-based"):
        tracker.report(epoch, 0.5)
    with pytest.raises(ValueError, match="1-based"):
        tracker.would_be_best(epoch, 0.5)
    assert tracker.last_epoch is None
