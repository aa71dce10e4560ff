"""``make bench``: every figure of issue 10 against its baseline, in one run (``python -m tests.bench``).

- ``run.py``: the command; runs the figures interleaved with their baselines, prints the table, writes
  ``bench/results.json``.
- ``floor.py``: the floor, the essential S3 and SQL operations of a promotion issued directly with boto3 and
  pg8000 (no SQLAlchemy, no ckpt).
- ``counting.py``: the deterministic counts (S3 calls, bytes of staged checkpoints read, database wire round
  trips and statements), also asserted by ``tests/integration/test_costs.py``.
- ``stack.py``: the local stack the timed figures run on (moto's server, PostgreSQL, the handler).
- ``coldstart.py``: cold start of the built function, ``-X importtime``, the built layer's size.
- ``staging.py``: the trainer's side (staging vs ``upload_file``; bytes read by profile and trainer).
"""
