"""Fixtures of the end-to-end tests: moto's standalone server, and the process environment they change."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.local_stack import moto_server


@pytest.fixture
def clean_environment() -> Iterator[None]:
    """The pipeline sets the function's environment the way Lambda would; put the test process's back."""
    saved = dict(os.environ)
    from aws_lambda_powertools.utilities.parameters import base

    from promote_checkpoints import handler

    handler._promoter = None
    yield
    handler._promoter = None
    # Powertools keeps its Secrets Manager client (with the endpoint of the test's moto server) and the values
    # it read, as Lambda's execution environment would: a new test is a new environment.
    base.DEFAULT_PROVIDERS.clear()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url
