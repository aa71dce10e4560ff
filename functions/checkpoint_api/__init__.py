"""CheckpointApiFunction: a job's promoted checkpoints, and short-lived download links to them, over an HTTP API."""
