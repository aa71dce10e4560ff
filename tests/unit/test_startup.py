"""A function's imports run with the garbage collector paused and end with it running again, their objects frozen."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt.startup import long_lived_imports

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def collector_running():
    gc.enable()
    yield
    gc.enable()


def test_the_collector_is_paused_inside_and_running_after_with_what_was_made_frozen():
    before = gc.get_freeze_count()
    with long_lived_imports():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)


def test_a_nested_use_keeps_the_collector_paused_until_the_outer_one_ends():
    with long_lived_imports():
        with long_lived_imports():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with long_lived_imports():
        pass
    assert not gc.isenabled()


def test_a_failing_import_still_restarts_the_collector():
    with pytest.raises(ImportError), long_lived_imports():
        import ckpt.no_such_module  # noqa: F401
    assert gc.isenabled()


@pytest.mark.parametrize(
    "module",
    ["promote_checkpoints.handler", "r2_queue_poller.handler", "sweeper.handler", "checkpoint_api.app"],
)
def test_each_function_leaves_the_collector_running_after_its_imports(module):
    script = (
        "import gc, importlib\n"
        f"importlib.import_module({module!r})\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 10000)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), str(ROOT / "layers" / "ckpt")])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]
