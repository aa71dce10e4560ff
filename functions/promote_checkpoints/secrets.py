"""The one way the functions read a Secrets Manager secret (database credentials, R2 keys, the Cloudflare token):
Powertools' parameters, each value cached for five minutes."""

from __future__ import annotations

SECRET_MAX_AGE_SECONDS = 300


def read_secret(arn: str) -> str:
    # Imported here: only a deployment that names a secret pays for it.
    from aws_lambda_powertools.utilities import parameters

    return str(parameters.get_secret(arn, max_age=SECRET_MAX_AGE_SECONDS))
