"""The ``sam local invoke`` tests run only when named: ``make test-invoke`` (``pytest tests/invoke``).

They need Docker, the Lambda base image (``make lambda-image``) and the built artifact (``sam build``); ``make test``
(``pytest``, over ``testpaths``) does not collect them, so it stays free of Docker on any machine.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _named_on_command_line(config: pytest.Config) -> bool:
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name.startswith("test_") and not _named_on_command_line(config):
        return True
    return None


@pytest.fixture(scope="session")
def stack() -> Iterator[object]:
    """The local stack of events/env.json, with Docker, the base image and the built artifact checked first:
    each missing piece fails the run with the command that provides it (never a skip)."""
    from tests.invoke import image, sam
    from tests.invoke.stack import local_stack

    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail(
            "Docker is required for the sam local invoke tests: apt-get install -y docker.io, start dockerd "
            "(.ci/run does both)",
            pytrace=False,
        )
    if image.image_kind() is None:
        pytest.fail(f"the Lambda base image {image.IMAGE} is missing: make lambda-image", pytrace=False)
    if not sam.BUILT_TEMPLATE.exists():
        pytest.fail("the built artifact .aws-sam/build is missing: make build", pytrace=False)
    with local_stack() as running:
        yield running
    image.prune_invoke_images()
