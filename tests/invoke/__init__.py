"""``sam local invoke`` for real: each file in ``events/`` through the built function (``.aws-sam/build``) in a
Lambda container, against a local stack on this machine.

- ``image.py``: the Lambda base image ``sam local invoke`` builds on (``make lambda-image``): the official
  ``public.ecr.aws/lambda/python:3.11`` when Docker can pull it, else a stand-in built from Debian's packages and
  PyPI (Debian bookworm's CPython 3.11 + ``awslambdaric``).
- ``forward.py``: TCP forwarders from the Docker bridge's gateway to services on the host's loopback.
- ``stack.py``: the local stack that ``events/env.json`` points the container at (moto's server, PostgreSQL), the
  example attempt an event names, staged with the trainer's own code, and the platform's rows.
- ``sam.py``: the ``sam local invoke`` command line and its answer.
- ``__main__.py``: ``make invoke EVENT=events/<file>``.
- ``test_events.py``: ``make test-invoke``. Collected only when asked for (``conftest.py``): ``make test`` stays
  free of Docker.
"""
