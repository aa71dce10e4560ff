"""Hooks into training frameworks (each imports its framework lazily; none is a dependency of ckpt)."""
