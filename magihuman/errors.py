"""Error types shared across layers (a leaf module: it imports nothing of the engine).

Every engine error is a ``ValueError`` subclass, so callers (the CLI, the nodes) can tell bad input from
bugs; the message always says what is wrong and how to fix it.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "PipelineError"]


class CheckpointError(ValueError):
    """A weights file is missing, truncated, corrupt, unsafe, or holds a different model than expected."""


class PipelineError(ValueError):
    """A stage was given inputs it cannot work with; the message says what and how to fix it."""
