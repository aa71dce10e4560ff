"""PromoteCheckpointsFunction: the Lambda entry point of the checkpoint promotion."""
