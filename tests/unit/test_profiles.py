"""Choosing the storage profile: by name, else from the endpoint."""

from __future__ import annotations

import pytest

from ckpt.adapters.profiles import R2, S3, profile_for
from ckpt.config import Settings
from ckpt.errors import ConfigurationError


@pytest.mark.parametrize(
    ("name", "endpoint", "profile"),
    [
        (None, None, S3),
        (None, "https://0123abcd.r2.cloudflarestorage.com", R2),
        (None, "https://0123abcd.eu.r2.cloudflarestorage.com", R2),
        (None, "http://127.0.0.1:5000", S3),
        (None, "https://r2.cloudflarestorage.com.example.com", S3),
        ("r2", "http://127.0.0.1:5000", R2),
        (" S3 ", "https://0123abcd.r2.cloudflarestorage.com", S3),
    ],
)
def test_the_profile_is_the_named_one_else_the_endpoints(name, endpoint, profile):
    assert profile_for(name, endpoint) is profile


def test_an_unknown_profile_is_a_configuration_error_naming_the_choices():
    with pytest.raises(ConfigurationError, match="s3, r2"):
        Settings.from_env({"STORAGE_PROFILE": "gcs"}).profile()
