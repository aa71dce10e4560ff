"""The edges: boto3 (S3 and R2, with each store's documented limits), SQLAlchemy (PostgreSQL and SQLite) and the
Cloudflare Queues API. Library errors leave here as the domain errors of ``ckpt.errors``."""
