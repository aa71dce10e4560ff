"""Checkpoint promotion: the contract shared by trainers, the promotion function and operators."""
