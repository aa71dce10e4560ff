"""The Lambda layer ships what the package and the function need, and nothing of the trainers'."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]


def _names(requirements: list[str]) -> dict[str, str]:
    parsed = [Requirement(line) for line in requirements]
    return {r.name.lower(): str(r.specifier) for r in parsed if r.name != "ckpt-pipeline"}


def test_the_layer_requirements_are_the_package_and_function_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = _names(project["dependencies"] + project["optional-dependencies"]["function"])
    lines = (ROOT / "layers/ckpt/requirements.txt").read_text().splitlines()
    layer = _names([line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()])
    assert layer == expected


def test_the_layer_never_carries_the_trainers_dependencies():
    text = (ROOT / "layers/ckpt/requirements.txt").read_text().lower()
    assert not any(name in text for name in ("torch", "ultralytics", "tqdm", "awscrt"))


def test_the_function_knows_the_queues_receive_count():
    import re

    template = (ROOT / "template.yaml").read_text()
    [queue] = re.findall(r"maxReceiveCount: (\d+)", template)
    [function] = re.findall(r'MAX_RECEIVE_COUNT: "(\d+)"', template)
    assert queue == function
